"""Runs inside a controller VM (with hacontrol's venv) and prints one JSON line every PERIOD seconds:
what LIO serves and whether this controller's reservation key is on the shared disks.

    /opt/hacontrol/venv/bin/python guest_monitor.py NODE_ID PERIOD DEVICE...

own_ao: some ALUA group in state Active/Optimized has a LUN in an *enabled* iSCSI TPG of this controller
(its own port, or the peer's port it adopted); registered: a key with this node id is registered on every
disk. The chaos monitor on the host timestamps each line on arrival. Standard library plus hacontrol's PR codec.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

from hacontrol.adapters.fencing import pr_codec as pr
from hacontrol.adapters.fencing.pr_transport import TransportError, open_transport

CONFIGFS = "/sys/kernel/config/target"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def enabled_tpgs() -> set[str]:
    """'iqn/tpgt_N' of every enabled iSCSI TPG."""
    out = set()
    for enable in glob.glob(f"{CONFIGFS}/iscsi/*/tpgt_*/enable"):
        if _read(enable) == "1":
            tpg = os.path.dirname(enable)
            out.add(f"{os.path.basename(os.path.dirname(tpg))}/{os.path.basename(tpg)}")
    return out


def serving() -> tuple[bool, list[str]]:
    tpgs = enabled_tpgs()
    groups = []
    ao = False
    for state_file in glob.glob(f"{CONFIGFS}/core/*/*/alua/*/alua_access_state"):
        group = os.path.dirname(state_file)
        state = _read(state_file)
        members = _read(os.path.join(group, "members")).split()
        live = any(any(t in m for t in tpgs) for m in members)
        groups.append(f"{os.path.basename(group)}={state}{'*' if live else ''}")
        if state == "0" and live:
            ao = True
    return ao, sorted(set(groups))


def registered(node_id: int, devices: list[str], transports: dict) -> bool | None:
    try:
        for device in devices:
            if device not in transports:
                transports[device] = open_transport(device, "")
            reply = transports[device].command(pr.cdb_pr_in(pr.PrIn.READ_KEYS, 4096), data_in_len=4096,
                                               timeout_s=1.0)
            if not reply.ok:
                return None
            keys = pr.parse_read_keys(reply.data).keys
            if not any(pr.key_parts(k)[0] == node_id for k in keys):
                return False
        return True
    except (TransportError, OSError):
        return None


def main(argv: list[str]) -> int:
    node_id, period, devices = int(argv[0]), float(argv[1]), argv[2:]
    transports: dict = {}
    for _ in range(int(3600 / period)):  # bounded: an hour at most
        ao, groups = serving()
        line = {"own_ao": ao, "registered": registered(node_id, devices, transports), "groups": groups}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        time.sleep(period)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
