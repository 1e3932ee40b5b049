"""Runs inside a controller (Debian's python3 + python3-rtslib-fb), fed on stdin by rigctl/smoke.py.

    python3 - setup IQN ADDRESS RTPI    create a throwaway target with a RAM LUN, relative target port id RTPI
    python3 - teardown IQN              delete it again

Prints one JSON object. The RTPI part records whether this kernel lets each controller have its own
relative target port id (the `rtpi` file in the TPG folder, writable only while the TPG is disabled).
"""

import json
import os
import sys

from rtslib_fb import LUN, TPG, FabricModule, NetworkPortal, RDMCPStorageObject, Target
from rtslib_fb.utils import RTSLibNotInCFS

SO_NAME = "hacrig_smoke"


def write_rtpi(tpg_path: str, value: int) -> str:
    try:
        with open(os.path.join(tpg_path, "rtpi"), "w") as f:
            f.write(str(value))
        return "ok"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"


def read_rtpi(tpg_path: str):
    try:
        with open(os.path.join(tpg_path, "rtpi")) as f:
            return int(f.read().strip(), 0)  # the kernel prints it in hex ("0x0")
    except OSError:
        return None


def setup(iqn: str, address: str, rtpi: int) -> dict:
    storage = RDMCPStorageObject(SO_NAME, size=16 * 1024 * 1024)
    target = Target(FabricModule("iscsi"), iqn)
    tpg = TPG(target, 1)
    result = {"rtpi_file": os.path.exists(os.path.join(tpg.path, "rtpi")), "rtpi_default": read_rtpi(tpg.path)}
    result["rtpi_write_disabled"] = write_rtpi(tpg.path, rtpi)
    # Open access for the smoke check only: any initiator may log in and write.
    for name, value in (("authentication", "0"), ("generate_node_acls", "1"), ("demo_mode_write_protect", "0"),
                        ("cache_dynamic_acls", "1")):
        tpg.set_attribute(name, value)
    LUN(tpg, 0, storage)
    NetworkPortal(tpg, address, 3260)
    tpg.enable = True
    result["rtpi"] = read_rtpi(tpg.path)
    result["rtpi_write_enabled"] = write_rtpi(tpg.path, rtpi + 100)  # expected to be refused
    result["rtpi_after"] = read_rtpi(tpg.path)
    result["enabled"] = bool(tpg.enable)
    return result


def teardown(iqn: str) -> dict:
    deleted = []
    try:
        Target(FabricModule("iscsi"), iqn, mode="lookup").delete()
        deleted.append("target")
    except RTSLibNotInCFS:
        pass
    try:
        RDMCPStorageObject(SO_NAME).delete()
        deleted.append("storage")
    except RTSLibNotInCFS:
        pass
    return {"deleted": deleted}


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        print(json.dumps(setup(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        print(json.dumps(teardown(sys.argv[2])))
