"""Port takeover and out of space with the LIO adapter in the VM rig (the layout of test_lio_kit.CONFIG).

    vagrant/rig up && /tmp/v/bin/python -m pytest tests/rig/test_lio_takeover.py -v

* the survivor presents the powered-off peer's port (its address, tag, relative port id and ALUA group, Active/
  Optimized), the rebooted peer converges from an empty LIO, and the port is handed back;
* a thin LUN on an LVM thin pool that runs out of space: what the initiator receives (error and queue modes),
  the capacity warning, and UNMAP giving the space back. Records go to the rig's log folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.rig.test_lio_kit import (
    PORTAL,
    VIP,
    clear_unit_attentions,
    path_view,
    secrets_in_logs,
    session,
)

pytestmark = pytest.mark.rig


# --- port takeover -------------------------------------------------------------------------------------------

def test_the_survivor_presents_the_dead_peers_port_and_hands_it_back(rig, lio, initiator):
    rig.power_off("ctrl-b")
    try:
        out = lio.run("ctrl-a", "adopt", "7")
        assert out.get("error") is None and out["peer_hosted"], out
        view = initiator(path_view, PORTAL["ctrl-b"], 0)  # the peer's address, answered by ctrl-a
        assert (view["rtpi"], view["group"], view["read"]) == (2, 2, "GOOD")
        assert view["groups"] == [(1, "active/optimized", (1,)), (2, "active/optimized", (2,))]
        lio.adopt_s = out["action_s"]
    finally:
        rig.power_on("ctrl-b")
        rig.provision()  # the rebooted VM comes back with the image's hacontrol: install this checkout again
        lio.push(lio.config(), nodes=("ctrl-b",))
        rig.ssh("ctrl-a", f"ip addr replace {VIP}/24 dev enp0s4")  # the guest setup may have reset addresses
    fresh = lio.run("ctrl-b", "observe")  # a fresh controller: LIO was empty after the reboot
    assert fresh["configured"] and fresh["tpgs"]["2"]["enabled"] and fresh["own"] == "STANDBY"
    released = lio.run("ctrl-a", "release")
    assert released.get("error") is None and not released["peer_hosted"]
    lio.run("ctrl-a", "up")
    up = lio.run("ctrl-b", "up")
    assert up["own_ports_up"]
    lio.run("ctrl-b", "alua", "STANDBY", "ACTIVE_OPTIMIZED")
    b = initiator(path_view, PORTAL["ctrl-b"], 0)
    assert (b["rtpi"], b["group"]) == (2, 2) and "02/04/0B" in b["read"]
    assert b["rtpg_raw"] == initiator(path_view, PORTAL["ctrl-a"], 0)["rtpg_raw"]
    timings = {"adopt_s": lio.adopt_s, "release_s": released["action_s"], "fresh_configure_s": fresh["configure_s"]}
    (Path(rig.log_dir or "/tmp") / "lio-takeover.json").write_text(json.dumps(timings))


# --- capacity and out of space ---------------------------------------------------------------------------------

THIN_LUN = """
  [[target.lun]]
  id = 2
  name = "ds2"
  device = "/dev/hactest/thin"
  serial = "f00dfeedf00dfeedf00dfeedf00dfeed"
  thin = true
  capacity_warn_percent = 50
"""
POOL = ("modprobe dm_thin_pool; truncate -s 80M /root/hactest.img; L=$(losetup -f --show /root/hactest.img); "
        "pvcreate -q $L && vgcreate -q hactest $L && "
        "lvcreate -q --type thin-pool -L 32M -n pool hactest -Zn && "
        "{{ [ {full} = n ] || lvchange -q --errorwhenfull y hactest/pool; }} && "
        "lvcreate -q -V 256M -T hactest/pool -n thin && udevadm settle")
UNPOOL = ("vgremove -q -f hactest 2>/dev/null; for l in $(losetup -j /root/hactest.img -O NAME -n); do "
          "pvremove -q -ff -y $l 2>/dev/null; losetup -d $l; done; rm -f /root/hactest.img")


def fill(portal: str, lun: int, megabytes: int) -> dict[str, Any]:
    """Write 1 MiB chunks until the first failure; returns how far it got and the failure's sense."""
    chunk = os.urandom(1 << 20)
    with session(portal, lun) as s:
        clear_unit_attentions(s)
        started = time.monotonic()
        for i in range(megabytes):
            r = s.write16(i * 2048, chunk, 512, timeout_s=120)
            if not r.ok:
                return {"written_mib": i, "status": r.describe(), "after_s": round(time.monotonic() - started, 2)}
        return {"written_mib": megabytes, "status": "GOOD"}


def write_again(portal: str, lun: int, within_s: float) -> dict[str, Any]:
    """After space was freed: how long until a write succeeds (dm-thin leaves out-of-space mode on its own)."""
    started = time.monotonic()
    with session(portal, lun) as s:
        clear_unit_attentions(s)
        for _ in range(int(within_s * 4)):
            r = s.write16(0, bytes(1 << 20), 512, timeout_s=30)
            if r.ok:
                return {"status": "GOOD", "after_s": round(time.monotonic() - started, 2)}
            time.sleep(0.25)
    return {"status": r.describe(), "after_s": round(time.monotonic() - started, 2)}


def unmap_all(portal: str, lun: int, blocks: int) -> str:
    with session(portal, lun) as s:
        clear_unit_attentions(s)
        param = bytes([0, 22, 0, 16, 0, 0, 0, 0]) + (0).to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(4)
        return s.execute(bytes([0x42, 0, 0, 0, 0, 0, 0, 0, len(param), 0]), data_out=param).describe()


@pytest.mark.rig_full
@pytest.mark.parametrize("mode", ["error", "queue"])
def test_out_of_space_on_a_thin_pool(rig, lio, initiator, mode):
    rig.ssh("ctrl-a", UNPOOL)
    r = rig.ssh("ctrl-a", POOL.format(full="y" if mode == "error" else "n"), timeout=120)
    assert r.returncode == 0, r.stderr
    if mode == "queue":  # dm-thin holds writes this long before failing them (default 60 s)
        rig.ssh("ctrl-a", "echo 5 > /sys/module/dm_thin_pool/parameters/no_space_timeout")
    try:
        lio.push(lio.config(extra_lun=THIN_LUN), nodes=("ctrl-a",), path="/root/lio-thin.toml")
        assert lio.run("ctrl-a", "observe", path="/root/lio-thin.toml")["configured"]
        outcome = initiator(fill, PORTAL["ctrl-a"], 2, 64, timeout=600)
        capacity = lio.run("ctrl-a", "observe", path="/root/lio-thin.toml")["capacity"]
        warned = any('"capacity_threshold"' in line and '"ds2"' in line for line in lio.logs[-1].splitlines())
        freed = initiator(unmap_all, PORTAL["ctrl-a"], 2, 256 * 2048)
        pool_after_unmap = rig.ssh("ctrl-a", "sleep 2; dmsetup status hactest-pool-tpool").stdout.strip()
        again = initiator(write_again, PORTAL["ctrl-a"], 2, 15.0)
        record = {"mode": mode, "outcome": outcome, "capacity": [c for c in capacity if c["lun"] == "ds2"],
                  "warned": warned, "unmap": freed, "pool_after_unmap": pool_after_unmap, "after_unmap": again}
        (Path(rig.log_dir or "/tmp") / f"out-of-space-{mode}.json").write_text(json.dumps(record, indent=1))
        print(json.dumps(record))
        # LIO 6.12 maps dm-thin's out-of-space error to the generic LOGICAL UNIT COMMUNICATION FAILURE, not
        # DATA PROTECT 27/07 (docs/lio.md): the warning below is what protects the VMs.
        assert outcome["written_mib"] < 64 and "02/08/00" in outcome["status"]
        assert warned and record["capacity"][0]["over"]
        assert again["status"] == "GOOD"  # UNMAP through LIO gave the pool its space back
    finally:
        lio.push(lio.config(), nodes=("ctrl-a",))
        lio.run("ctrl-a", "observe")
        rig.ssh("ctrl-a", UNPOOL + "; echo 60 > /sys/module/dm_thin_pool/parameters/no_space_timeout")


def test_no_secret_reached_any_log(rig, lio):
    assert lio.logs and not secrets_in_logs(rig, lio)
