"""Two real agent processes against the real ensemble: kill, freeze, partition, ZooKeeper faults, hactl.

The target, addresses, disks and watchdog are the recording doubles (hacontrol --doubles): their logs, with
monotonic timestamps from both processes, let every test check that no two controllers ever accepted
writes at the same time, besides what the test is about.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

import pytest

from tests.integration.agentkit import NODES, AgentPair, overlaps, writable_intervals

pytestmark = [pytest.mark.zookeeper, pytest.mark.slow]


@pytest.fixture
def pair_factory(zk_ensemble, zk_chroot, tmp_path):
    made: list[AgentPair] = []

    def make(fencing=("scsi_pr",), guardian=False, **timing) -> AgentPair:
        pair = AgentPair(zk_ensemble, zk_chroot, tmp_path / f"pair{len(made)}", fencing=fencing, timing=timing)
        made.append(pair)
        pair.start_all(guardian=guardian)
        return pair

    yield make
    for pair in made:
        pair.stop()
        bad = overlaps(writable_intervals(pair, time.monotonic()))
        assert not bad, f"two controllers accepted writes at once: {bad}"


def other(node: str) -> str:
    return NODES[1] if node == NODES[0] else NODES[0]


class Loss(NamedTuple):
    active: str  # the controller the fault hit
    survivor: str
    epoch: int  # the epoch before the fault; the survivor leads under the next one
    at: float  # the fault's mark (monotonic)


def lose_the_active(pair: AgentPair, label: str, fault: Callable[[str], object], what: str = "") -> Loss:
    """One active controller; ``fault(active)`` under the mark ``label``; then the survivor leading under the
    next epoch (``what`` names that wait in a timeout's message)."""
    active = pair.active_steady()
    epoch = pair.leader()[1]
    at = pair.mark(label)
    fault(active)
    survivor = other(active)
    pair.wait_for(lambda: pair.leader() == (survivor, epoch + 1), 15,
                  what or f"{survivor} to lead under epoch {epoch + 1}")
    return Loss(active, survivor, epoch, at)


def test_one_controller_becomes_active_and_status_agrees(pair_factory):
    pair = pair_factory()
    active = pair.active_steady()
    doc = pair.status()
    assert doc["leader"]["node"] == active and doc["epoch"] == doc["leader"]["epoch"] >= 1
    standby = next(n for n in doc["nodes"] if n["node"] == other(active))
    assert standby["role"] == "standby" and standby["alua"] == "standby" and standby["vips"] == []
    assert doc["automatic_failover"]["possible"], doc["automatic_failover"]
    table = pair.hactl("status").stdout
    assert f"active {active} (epoch {doc['epoch']}" in table
    assert "automatic failover: possible" in table
    for n in doc["nodes"]:
        assert n["node"] in table and n["role"] in table


def test_kill_9_of_the_active_fails_over_under_a_new_epoch(pair_factory):
    """With power fencing the survivor powers the dead controller off (its kernel still held the VIP)."""
    pair = pair_factory(fencing=("scsi_pr", "command"))
    _, survivor, epoch, _ = lose_the_active(pair, "kill", pair.kill)
    assert pair.active_steady() == survivor
    history = json.loads(pair.hactl("history", "--json").stdout)
    takeover = [e for e in history if e.get("kind") == "failover" and e.get("to") == survivor]
    phases = takeover[-1]["phases"] if takeover else {}
    order = ["detect", "claimed", "fenced", "alua", "vips", "active"]
    assert sorted(phases) == sorted(order)
    assert [phases[p] for p in order] == sorted(phases[p] for p in order), phases
    # the survivor fenced before it promoted: the disk double saw its takeover before its ALUA went AO
    calls = pair.calls(survivor)
    fence_t = next(c["t"] for c in calls if c["call"] == "pr_take_over" and c["epoch"] == epoch + 1)
    ao_t = next(c["t"] for c in calls
                if c["call"] == "set_alua" and c["own"] == "active/optimized" and c["t"] >= fence_t)
    assert fence_t <= ao_t


def test_kill_9_then_restart_without_power_fencing(pair_factory):
    """Without power fencing the VIP moves once the restarted agent (systemd Restart=) has stepped down."""
    pair = pair_factory(fencing=("scsi_pr",))
    active, survivor, _, _ = lose_the_active(pair, "kill", pair.kill, "the survivor to lead")
    assert pair.status()["nodes"][NODES.index(survivor)]["vips"] == []  # the dead node's kernel still holds it
    pair.start(active)
    assert pair.active_steady() == survivor
    assert pair.role(active) == "standby"


def test_the_guardian_steps_a_killed_agents_controller_down_so_the_survivor_gets_the_vip(pair_factory):
    """With the guardian (the agent's default), a kill -9 of the active's agent leaves a child that stops
    serving at once: no restart of the dead agent is needed before the survivor holds the VIP."""
    pair = pair_factory(fencing=("scsi_pr",), guardian=True)
    active, survivor, _, killed = lose_the_active(pair, "kill", pair.kill, "the survivor to lead")
    assert pair.active_steady() == survivor  # with the VIP: the dead agent's guardian released it
    after = [c["call"] for c in pair.calls(active) if c["t"] >= killed]
    assert "release" in after and "set_alua" in after, after
    assert "claim" not in after and "pr_take_over" not in after, after


def test_sigstop_past_the_session_timeout_then_sigcont_never_acts_under_the_old_epoch(pair_factory):
    pair = pair_factory(fencing=("scsi_pr",))
    active, survivor, _, stopped = lose_the_active(pair, "sigstop", lambda n: pair.signal(n, signal.SIGSTOP),
                                                   "the peer to take over")
    pair.signal(active, signal.SIGCONT)
    resumed = pair.mark("sigcont")
    # the survivor gets the VIP only after the old active gave it up (duplicate-address check)
    assert pair.active_steady() == survivor
    after = [c for c in pair.calls(active) if c["t"] >= resumed]
    assert after, "the resumed agent did nothing"
    assert not any(c["call"] == "set_alua" and c["own"] == "active/optimized" for c in after)
    assert not any(c["call"] in ("pr_take_over", "claim") for c in after)
    first_alua = next(c for c in after if c["call"] == "set_alua")
    assert first_alua["own"] in ("standby", "transitioning")
    assert stopped < resumed


def test_sigstop_shorter_than_the_session_timeout_changes_nothing(pair_factory):
    pair = pair_factory()
    active = pair.active_steady()
    epoch = pair.leader()[1]
    pair.signal(active, signal.SIGSTOP)
    time.sleep(0.5)
    pair.signal(active, signal.SIGCONT)
    time.sleep(3 * pair.session_timeout_s)
    assert pair.leader() == (active, epoch)
    assert pair.active_steady() == active


def test_partitioned_active_steps_down_before_the_peer_takes_over(pair_factory):
    pair = pair_factory()
    active, survivor, epoch, cut = lose_the_active(pair, "partition", pair.partition, "the peer to take over")
    down = next(c["t"] for c in pair.calls(active) if c["t"] >= cut and c["call"] == "set_alua"
                and c["own"] == "standby")
    fenced = next(c["t"] for c in pair.calls(survivor) if c["call"] == "pr_take_over" and c["epoch"] == epoch + 1)
    assert down < fenced, "the partitioned active still served when the peer fenced it"
    assert down - cut < pair.session_timeout_s, "stepped down later than the session timeout"
    pair.partition(active, cut=False)
    pair.wait_for(lambda: pair.role(active) == "standby", 15, "the healed controller to rejoin as standby")
    assert pair.leader() == (survivor, epoch + 1)


@pytest.mark.parametrize("which", ["leader", "follower"])
def test_losing_one_zookeeper_member_does_not_fail_over(pair_factory, zk_ensemble_healthy, which):
    pair = pair_factory()
    active = pair.active_steady()
    epoch = pair.leader()[1]
    ens = zk_ensemble_healthy
    zk_leader = ens.leader()
    victim = zk_leader if which == "leader" else next(m.myid for m in ens.members if m.myid != zk_leader)
    ens.stop_member(victim, kill=True)
    ens.wait_for_quorum(20)
    time.sleep(3 * pair.session_timeout_s)
    assert pair.leader() == (active, epoch)
    assert pair.active_steady() == active


def test_planned_failover_both_ways(pair_factory):
    pair = pair_factory()
    first = pair.active_steady()
    second = other(first)
    for target in (second, first):
        epoch = pair.leader()[1]
        out = pair.hactl("failover", "--to", target, "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["active"] == target and doc["epoch"] == epoch + 1
        assert pair.active_steady() == target
    # the old side stepped down (transitioning) before the new side took the disk
    calls_first = pair.calls(first)
    trans = [c["t"] for c in calls_first if c["call"] == "set_alua" and c["own"] == "transitioning"]
    takes = [c["t"] for c in pair.calls(second) if c["call"] == "pr_take_over"]
    assert trans and any(t > trans[0] for t in takes)
    history = json.loads(pair.hactl("history", "--json").stdout)
    assert [e["to"] for e in history if e.get("kind") == "switchover"][-2:] == [second, first]


def test_failover_refusals_have_distinct_exit_codes(pair_factory):
    pair = pair_factory()
    active = pair.active_steady()
    standby = other(active)
    assert pair.hactl("failover", "--to", "nosuch").returncode == 4
    pair.hactl("maintenance", "on", "--reason", "disk swap")
    refused = pair.hactl("failover")
    assert refused.returncode == 5 and "maintenance" in refused.stderr
    pair.hactl("maintenance", "off")
    pair.kill(standby)
    pair.wait_for(lambda: not any(n["live_session"] for n in pair.status()["nodes"] if n["node"] == standby), 15,
                  "the standby's session to expire")
    no_peer = pair.hactl("failover", "--to", standby)
    assert no_peer.returncode == 5 and "no live ZooKeeper session" in no_peer.stderr
    unreachable = pair.hactl("status", "--zk-hosts", "127.0.0.1:9")
    assert unreachable.returncode == 3 and "cannot reach ZooKeeper" in unreachable.stderr


def test_failover_times_out_when_nobody_acts(pair_factory):
    pair = pair_factory()
    active = pair.active_steady()
    pair.signal(active, signal.SIGSTOP)
    try:
        out = pair.hactl("failover", "--timeout", "1")
        assert out.returncode == 6 and "did not complete" in out.stderr
    finally:
        pair.signal(active, signal.SIGCONT)


def test_maintenance_blocks_automatic_failover_and_status_says_so(pair_factory):
    pair = pair_factory()
    active = pair.active_steady()
    epoch = pair.leader()[1]
    assert pair.hactl("maintenance", "on", "--reason", "firmware").returncode == 0
    pair.kill(active)
    survivor = other(active)
    time.sleep(3 * pair.session_timeout_s)
    doc = pair.status()
    assert doc["leader"] is None and doc["epoch"] == epoch
    assert not doc["automatic_failover"]["possible"]
    assert any("maintenance mode is on (firmware" in w for w in doc["automatic_failover"]["why_not"])
    frozen = next(n for n in doc["nodes"] if n["node"] == survivor)["frozen_actions"]
    assert "ClaimLeadership" in frozen
    assert "would have done: " in pair.hactl("status").stdout
    shown = json.loads(pair.hactl("maintenance", "show", "--json").stdout)
    assert shown["enabled"] and "ClaimLeadership" in shown["would_have_done"][survivor]
    pair.hactl("maintenance", "off")
    pair.wait_for(lambda: pair.leader() == (survivor, epoch + 1), 15, "the takeover after maintenance")


def test_crash_of_the_new_active_between_fence_and_promotion(zk_ensemble, zk_chroot, tmp_path):
    """The survivor dies right after fencing (before ALUA/VIPs): the other one takes over again, fencing anew."""
    pair = AgentPair(zk_ensemble, zk_chroot, tmp_path / "pair", fencing=("scsi_pr",))
    try:
        pair.start_all()
        active = pair.active_steady()
        survivor = other(active)
        epoch = pair.leader()[1]
        pair.procs[survivor].send_signal(signal.SIGTERM)  # restart the survivor with the crash point armed
        pair.procs[survivor].wait(timeout=15)
        pair.start(survivor, env={"HACONTROL_FAULT_CRASH_AFTER": "FencePeer"})
        pair.wait_for(lambda: pair.role(survivor) == "standby", 20, "the survivor to rejoin as standby")
        pair.kill(active)
        pair.wait_for(lambda: pair.procs[survivor].poll() is not None, 20, "the survivor to crash after fencing")
        assert pair.procs[survivor].returncode == 70
        fenced = [c for c in pair.calls(survivor) if c["call"] == "pr_take_over"]
        assert fenced and fenced[-1]["epoch"] == epoch + 1
        assert not any(c["call"] == "set_alua" and c["own"] == "active/optimized" and c["t"] > fenced[-1]["t"]
                       for c in pair.calls(survivor))
        pair.start(active)  # the first controller comes back; the crashed one stays down
        pair.wait_for(lambda: (lead := pair.leader()) is not None and lead[0] == active and lead[1] > epoch + 1,
                      30, "the first controller to take over under a newer epoch")
        assert pair.active_steady() == active
    finally:
        pair.stop()
