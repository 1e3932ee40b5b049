"""Two real agents with the peer link (two loopback paths) against the real ensemble: a dead active taken over
on the link's word, and ZooKeeper lost by the active or by both while the standby promises not to claim.

Like tests/integration/test_agents.py, the recording doubles stand in for the target, the disks, the power
switch and the watchdog; every test also checks that no two controllers ever accepted writes at once.
"""

from __future__ import annotations

import json
import time

import pytest

from hacontrol.cli.status import FAILSAFE_LINE
from tests.integration.agentkit import NODES, AgentPair, overlaps, writable_intervals

pytestmark = [pytest.mark.zookeeper, pytest.mark.slow]

STEP_DOWN_CALLS = {"release", "cut_connections"}


@pytest.fixture
def linked_pair(zk_ensemble, zk_chroot, tmp_path):
    pair = AgentPair(zk_ensemble, zk_chroot, tmp_path / "pair", fencing=("scsi_pr", "command"), peer_link=True)
    pair.start_all()
    yield pair
    pair.stop()
    bad = overlaps(writable_intervals(pair, time.monotonic()))
    assert not bad, f"two controllers accepted writes at once: {bad}"


def other(node: str) -> str:
    return NODES[1] if node == NODES[0] else NODES[0]


def step_downs(pair: AgentPair, node: str, since: float) -> list[dict]:
    """What the node did to stop serving after ``since`` (ALUA away from AO, addresses released)."""
    return [c for c in pair.calls(node) if c["t"] >= since and (
        c["call"] in STEP_DOWN_CALLS or (c["call"] == "set_alua" and c["own"] != "active/optimized"))]


def test_a_killed_active_is_powered_off_and_taken_over_on_the_links_word(linked_pair):
    pair = linked_pair
    active = pair.active_steady()
    epoch = pair.leader()[1]
    survivor = other(active)
    pair.wait_for(lambda: any(n["peer_link"] and all(p["heard_ago_s"] is not None for p in n["peer_link"]["paths"])
                              for n in pair.status()["nodes"] if n["node"] == survivor), 10, "the link heard")
    pair.kill(active)
    pair.wait_for(lambda: pair.leader() == (survivor, epoch + 1), 15, f"{survivor} to lead under {epoch + 1}")
    history = json.loads(pair.hactl("history", "--json").stdout)
    takeover = [e for e in history if e.get("kind") == "failover" and e.get("to") == survivor][-1]
    assert takeover["detected_by"] == "peer_link", takeover
    calls = pair.calls(survivor)
    off = next(c["t"] for c in calls if c["call"] == "power_off" and c["epoch"] == epoch + 1)
    keys = next(c["t"] for c in calls if c["call"] == "pr_take_over" and c["epoch"] == epoch + 1)
    ao = next(c["t"] for c in calls if c["call"] == "set_alua" and c["own"] == "active/optimized" and c["t"] > keys)
    assert off <= keys <= ao  # confirmed off, then the disks, then the ports


def test_zookeeper_lost_by_both_keeps_the_active_serving_and_it_leads_again_after(linked_pair):
    pair = linked_pair
    active = pair.active_steady()
    standby = other(active)
    epoch = pair.leader()[1]
    cut = pair.mark("zookeeper unreachable for both")
    for node in NODES:
        pair.partition(node)
    time.sleep(4 * pair.session_timeout_s)  # both sessions expire on the servers meanwhile
    local = pair.hactl("status", "--zk-hosts", "127.0.0.1:9", env={"HACONTROL_ZK_CONNECT_S": "1"})
    assert local.returncode == 3, local
    assert f"{active}: {FAILSAFE_LINE}" in local.stdout, local.stdout
    assert step_downs(pair, active, cut) == []
    for node in NODES:
        pair.partition(node, cut=False)
    pair.wait_for(lambda: pair.leader() == (active, epoch + 1), 20, f"{active} to lead again under {epoch + 1}")
    assert pair.active_steady() == active
    assert step_downs(pair, active, cut) == []
    assert not any(c["call"] == "power_off" for c in pair.calls(active) if c["t"] >= cut)  # the standby lives
    assert not any(c["call"] == "pr_take_over" for c in pair.calls(standby) if c["t"] >= cut)


def test_zookeeper_lost_by_the_active_alone_the_standby_keeps_its_promise(linked_pair):
    pair = linked_pair
    active = pair.active_steady()
    standby = other(active)
    epoch = pair.leader()[1]
    cut = pair.mark("active cut from zookeeper")
    pair.partition(active)
    pair.wait_for(lambda: pair.leader() is None, 10, "the active's session to expire")
    time.sleep(2 * pair.session_timeout_s)
    doc = pair.status()
    promised = next(n for n in doc["nodes"] if n["node"] == standby)
    assert promised["reason"] == "promised", promised
    assert "promised it over the peer link not to claim" in pair.hactl("status").stdout
    assert step_downs(pair, active, cut) == []
    pair.partition(active, cut=False)
    pair.wait_for(lambda: pair.leader() == (active, epoch + 1), 20, f"{active} to lead again under {epoch + 1}")
    assert step_downs(pair, active, cut) == []
