"""The initiators' own persistent reservations across a failover (issue #18), with sg_persist in the
initiator VM, on the agents as deployed (LIO, ALUA, port takeover, power fencing).

Two initiator ports in the initiator VM (open-iscsi ifaces with the VM's own IQN and the probe's IQN, both
in the target's ACL) log in to both controllers' own portals (the module's teardown resets the agents).
Both register their keys through both paths, and the first reserves through the active's. One controller
fails over; on the new active both read the same keys (every registration, made through either controller)
and the same reservation, a write the reservation type forbids still gets RESERVATION CONFLICT, and PREEMPT
AND ABORT from the second initiator moves the reservation and removes every registration of the first key.
Port takeover (unplanned) carries the active's portal address and target port identity to the survivor, so
the I_T nexus through it stays the same.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.chaos import prstorm

pytestmark = pytest.mark.rig

KEY_A, KEY_B = 0x6775657374000a01, 0x6775657374000b02
TYPES = {"WERO": 5, "EA": 3}


@pytest.fixture(scope="module", autouse=True)
def _clean_afterwards(rig):
    yield
    from rigctl import agents

    _initiator(rig, prstorm.LOGOUT, check=False)
    agents.reset(rig)


_initiator, _sg, _keys = prstorm.initiator, prstorm.sg, prstorm.keys


def _reservation(rig: Any, dev: str) -> tuple[int, str] | None:
    rc, out = _sg(rig, f"sg_persist --in --read-reservation {dev}")
    assert rc == 0, out
    m = re.search(r"Key=(0x[0-9a-f]+)\s+scope: \S+\s+type: (.+)$", out, re.M)
    return None if m is None else (int(m[1], 16), m[2].strip())


def _write_status(rig: Any, dev: str) -> str:
    """One WRITE(10) of a block near the end of the first MiB; the SCSI status as sg_raw prints it."""
    rc, out = _sg(rig, f"sg_raw -s 512 -i /dev/zero {dev} 2a 00 00 00 07 f0 00 00 01 00")
    m = re.search(r"SCSI Status: (.+)", out)
    return "Good" if rc == 0 and m is None else (m[1].strip() if m else f"rc {rc}: {out.strip()[-300:]}")


def _published(rig: Any, cluster: Any, active: str, timeout_s: float = 60) -> None:
    """Until the active's member report shows nothing it has not written to ZooKeeper yet."""
    deadline = time.monotonic() + rig.scaled(timeout_s)
    sync = None
    while time.monotonic() < deadline:
        nodes = {n["node"]: n for n in cluster.status().get("nodes", [])}
        sync = (nodes.get(active) or {}).get("reservations_sync") or {}
        if sync and not sync.get("unpublished") and not sync.get("not_loaded"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{active} did not publish its initiators' reservations: {sync}")


def _fail_over(rig: Any, cluster: Any, how: str, active: str) -> str:
    from rigctl import agents

    standby = cluster.peer(active)
    if how == "kill-9":
        rig.kill_agent(active)
    elif how == "power-off":
        rig.power_off(active)
    else:
        out = agents.hactl(rig, "failover", "--to", standby, timeout=rig.scaled(120))
        assert out.returncode == 0, out.stderr
    _fail_over_seen(rig, cluster, standby)
    return standby


def _scenario(rig: Any, how: str, kind: str) -> None:
    from rigctl import agents

    from tests.chaos.rigchaos import Cluster

    agents.reset(rig)
    agents.deploy(rig, agents.config_text(rig))
    agents.start(rig)
    cluster = Cluster(rig)
    active = cluster.restore()
    standby = cluster.peer(active)
    dev = prstorm.login(rig, {"hacpra": rig.topology.node_iqn(rig.topology.initiators[0]),
                              "hacprb": agents.PROBE_INITIATOR})
    first, second = prstorm.portal(rig, active), prstorm.portal(rig, standby)
    a1, a2, b1, b2 = (dev[(i, p)] for i, p in (("hacpra", first), ("hacpra", second), ("hacprb", first),
                                              ("hacprb", second)))
    # both register on every path (as multipathing initiators may). A third initiator port of the same name
    # would not do as a non-registrant: LIO counts a nexus as registered per ACL and LUN, not per ISID.
    for d, key in ((a1, KEY_A), (a2, KEY_A), (b1, KEY_B), (b2, KEY_B)):
        rc, out = _sg(rig, f"sg_persist --out --register --param-sark={key:#x} {d}")
        assert rc == 0, out
    rc, out = _sg(rig, f"sg_persist --out --reserve --param-rk={KEY_A:#x} --prout-type={TYPES[kind]} {a1}")
    assert rc == 0, out
    held = _reservation(rig, a1)
    # each controller holds what came through its own ports (LIO keeps PR per controller)
    assert _keys(rig, a1) == _keys(rig, a2) == sorted([KEY_A, KEY_B]) and held[0] == KEY_A
    _published(rig, cluster, active)
    _fail_over(rig, cluster, how, active)
    # on the new active (its own portal: a path to it whatever the failover), both initiators see every
    # registration made through either controller, and the reservation made through the old active
    keys_a, keys_b = _keys(rig, a2), _keys(rig, b2)
    assert keys_a == keys_b == sorted([KEY_A, KEY_A, KEY_B, KEY_B]), (keys_a, keys_b)
    assert _reservation(rig, a2) == _reservation(rig, b2) == held
    writes = {"b_registered": _write_status(rig, b2), "a_other_port": _write_status(rig, a2)}
    if how != "planned":  # the holder's own nexus: the old active's port, now on the new one (port takeover)
        writes["a_holder"] = _write_status(rig, a1)
        assert writes["a_holder"] == "Good", writes
    # EA: only the holder's I_T nexus may write; WERO: every registered nexus may
    expected = "Reservation Conflict" if kind == "EA" else "Good"
    assert writes["b_registered"] == writes["a_other_port"] == expected, writes
    rc, out = _sg(rig, f"sg_persist --out --preempt-abort --param-rk={KEY_B:#x} --param-sark={KEY_A:#x} "
                       f"--prout-type={TYPES[kind]} {b2}")
    assert rc == 0, out
    assert _keys(rig, b2) == [KEY_B, KEY_B]  # every registration of the first key is gone, on both ports
    assert _reservation(rig, b2)[0] == KEY_B
    assert _write_status(rig, a2) == "Reservation Conflict"  # the preempted one is a non-registrant now


@pytest.mark.parametrize(("how", "kind"), [
    ("kill-9", "EA"),
    pytest.param("planned", "WERO", marks=pytest.mark.rig_full),
    pytest.param("power-off", "WERO", marks=pytest.mark.rig_full),
    pytest.param("kill-9", "WERO", marks=pytest.mark.rig_full),
    pytest.param("planned", "EA", marks=pytest.mark.rig_full),
])
def test_guest_reservations_survive_a_failover(rig, how, kind):
    _scenario(rig, how, kind)


def _fail_over_seen(rig: Any, cluster: Any, standby: str) -> None:
    deadline = time.monotonic() + rig.scaled(8 * cluster.session_timeout_s + 60)
    while time.monotonic() < deadline and cluster.active() != standby:
        time.sleep(0.5)
    assert cluster.active() == standby, cluster.status()


def test_a_restarted_agent_serves_the_directory_again(rig):
    """kill -9 of the standby's agent (systemd restarts it): the new agent detaches its dead predecessor's
    mount (LIO's writes fail on that one: no PR-OUT is acknowledged that no agent saw) and serves the directory
    LIO writes the PR state into again, with the files it kept under /run; PR-OUTs through it work again."""
    from rigctl import agents

    from tests.chaos.rigchaos import Cluster

    agents.reset(rig)
    agents.deploy(rig, agents.config_text(rig))
    agents.start(rig)
    cluster = Cluster(rig)
    standby = cluster.peer(cluster.restore())
    dev = prstorm.login(rig, {"hacpra": rig.topology.node_iqn(rig.topology.initiators[0])})
    through = dev[("hacpra", prstorm.portal(rig, standby))]
    rc, out = _sg(rig, f"sg_persist --out --register-ignore --param-sark={KEY_A:#x} {through}")
    assert rc == 0, out
    since = rig.ssh(standby, "date +%s", timeout=rig.scaled(30)).stdout.strip()
    rig.kill_agent(standby)
    mounted = ""
    deadline = time.monotonic() + rig.scaled(120)
    while time.monotonic() < deadline:
        mounted = rig.ssh(standby, f"journalctl -u hacontrol.service --since @{since} -o cat | grep -c "
                                   "-e lio_pr_store_mounted -e lio_pr_store_unavailable", timeout=rig.scaled(30)
                          ).stdout.strip()
        if mounted == "1":
            break
        time.sleep(1.0)
    journal = rig.ssh(standby, f"journalctl -u hacontrol.service --since @{since} -o cat | grep lio_pr_store",
                      timeout=rig.scaled(30)).stdout
    assert "lio_pr_store_mounted" in journal and "unavailable" not in journal, journal
    stack = rig.ssh(standby, "grep -e hacontrol-pr /proc/1/mountinfo | awk '{print $(NF-1)}'",
                    timeout=rig.scaled(30)).stdout.split()
    assert stack == ["hacontrol-pr-base", "hacontrol-pr"], stack  # the base, and one live mount: the dead one gone
    rc, out = _sg(rig, f"sg_persist --out --register-ignore --param-sark={KEY_B:#x} {through}")
    assert rc == 0, out
    assert KEY_B in _keys(rig, through)
    prstorm.unregister(rig, [through])
    _initiator(rig, prstorm.LOGOUT, check=False)
