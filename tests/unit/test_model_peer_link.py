"""The peer link in the model, scenario by scenario: what a fast takeover and the failsafe do, with the safety
invariants checked after every step (the hypothesis machine ``TestPeerLinkOn`` searches the same model)."""

from __future__ import annotations

import pytest

from hacontrol.core.decide import Reason
from hacontrol.core.timing import Timing
from hacontrol.simulation.cluster import Cluster, Profile
from hacontrol.simulation.invariants import SAFETY, fully_active

T = Timing()  # session 2 s, demote deadline 1 s, heartbeats every 0.1 s, dead after 0.3 s


def pair(**profile) -> Cluster:
    defaults = {"pr": True, "alua": True, "power_fencing": True, "hardware_watchdog": True, "peer_link": True,
                "fast_takeover": True, "failsafe": True}
    cl = Cluster(T, Profile(**{**defaults, **profile}))
    cl.checks.extend(SAFETY)
    cl.advance(8.0)
    assert len(fully_active(cl)) == 1
    return cl


def active_and_standby(cl: Cluster) -> tuple[str, str]:
    active = fully_active(cl)[0]
    return active, cl.peer_of(active).name


def time_until_active(cl: Cluster, node: str, limit: float) -> float:
    start = cl.now
    while cl.now - start < limit:
        cl.advance(T.loop_interval_s)
        if fully_active(cl) == [node]:
            return cl.now - start
    raise AssertionError(f"{node} not active {limit} s later; log tail {cl.log[-12:]}")


def test_a_dead_active_is_taken_over_before_its_session_expires():
    cl = pair()
    active, standby = active_and_standby(cl)
    epoch = cl.zk.epoch
    cl.nodes[active].agent_running = False  # the agent dies; its kernel target keeps serving
    cl.nodes[active].forget()
    took = time_until_active(cl, standby, 3.0)
    assert took < T.session_timeout_s, took
    assert not cl.nodes[active].powered, "the silent peer is powered off before the claim"
    assert cl.zk.epoch == epoch + 1


def test_a_frozen_active_is_powered_off_not_left_serving_beside_the_new_one():
    cl = pair()
    active, standby = active_and_standby(cl)
    cl.freeze(active, 1.5)  # past dead_after, short of the session timeout: ZooKeeper would not notice
    took = time_until_active(cl, standby, 3.0)
    assert took < T.session_timeout_s
    assert not cl.nodes[active].powered


def test_without_the_link_the_same_death_waits_for_the_session():
    cl = pair(peer_link=False, fast_takeover=False, failsafe=False)
    active, standby = active_and_standby(cl)
    cl.nodes[active].agent_running = False
    cl.nodes[active].forget()
    assert time_until_active(cl, standby, 6.0) >= T.session_timeout_s


@pytest.mark.parametrize("loss", [0.1, 0.5])
def test_loss_on_one_path_never_fails_over(loss):
    cl = pair()
    active, _ = active_and_standby(cl)
    epoch = cl.zk.epoch
    cl.net.paths[1].loss = loss
    cl.net.rng.seed(7)
    cl.advance(60.0)
    assert fully_active(cl) == [active] and cl.zk.epoch == epoch


def test_a_cut_link_alone_changes_nothing_while_zookeeper_sees_the_active_tick():
    cl = pair()
    active, _ = active_and_standby(cl)
    epoch = cl.zk.epoch
    for p in cl.net.paths:
        p.cut = True
    cl.advance(20.0)
    assert fully_active(cl) == [active] and cl.zk.epoch == epoch and cl.nodes[active].powered


def test_with_the_link_cut_a_later_death_is_still_taken_over_early():
    """Silent on the link since the cut; once ZooKeeper stops seeing it tick too, it is dead to the standby."""
    cl = pair()
    active, standby = active_and_standby(cl)
    for p in cl.net.paths:
        p.cut = True
    cl.advance(2.0)
    cl.nodes[active].agent_running = False
    cl.nodes[active].forget()
    assert time_until_active(cl, standby, 8.0) < T.session_timeout_s
    assert not cl.nodes[active].powered


def test_zookeeper_lost_by_the_active_alone_changes_nothing():
    cl = pair()
    active, standby = active_and_standby(cl)
    epoch = cl.zk.epoch
    cl.nodes[active].zk_reachable = False
    cl.advance(5 * T.session_timeout_s)  # its session expires; the standby has ZooKeeper and promised
    assert fully_active(cl) == [] and cl.serving(cl.nodes[active]) and cl.writes_accepted(cl.nodes[active])
    assert cl.nodes[active].last_plan.reason is Reason.FAILSAFE
    assert cl.nodes[standby].last_plan.reason is Reason.PROMISED
    cl.nodes[active].zk_reachable = True
    cl.advance(2.0)
    assert fully_active(cl) == [active] and cl.zk.epoch == epoch + 1  # led again without stepping down
    assert not any("RemoveVips" in what for _, node, what in cl.log if node == active)


def test_zookeeper_ensemble_down_keeps_the_active_serving():
    cl = pair()
    active, _ = active_and_standby(cl)
    for c in cl.nodes.values():
        c.zk_reachable = False
    cl.advance(150.0)
    assert cl.serving(cl.nodes[active]) and cl.writes_accepted(cl.nodes[active])
    for c in cl.nodes.values():
        c.zk_reachable = True
    cl.advance(3.0)
    assert fully_active(cl) == [active]


def test_zookeeper_and_the_link_both_lost_falls_back_to_the_deadline():
    cl = pair()
    active, _ = active_and_standby(cl)
    cl.nodes[active].zk_reachable = False
    for p in cl.net.paths:
        p.cut = True
    cl.advance(T.demote_deadline_s + 0.5)
    assert not cl.serving(cl.nodes[active])  # no promise can reach it: it steps down on its lease deadline


def test_an_active_that_dies_during_the_failsafe_is_taken_over_once_the_promise_ends():
    cl = pair()
    active, standby = active_and_standby(cl)
    cl.nodes[active].zk_reachable = False
    cl.advance(3 * T.session_timeout_s)  # its session expired; it serves on the standby's promise
    cl.power_cycle(active)
    took = time_until_active(cl, standby, 10.0)
    assert took >= T.session_timeout_s - T.loop_interval_s  # the promise it gave held the standby back


def test_replayed_heartbeats_neither_revive_a_dead_active_nor_renew_a_promise():
    cl = pair()
    active, standby = active_and_standby(cl)
    cl.nodes[active].zk_reachable = False
    cl.advance(3.0)
    cl.power_cycle(active)
    for _ in range(40):  # replay what the wire carried, every step, while the standby waits
        cl.net.replay(20, cl.now)
        cl.advance(T.loop_interval_s)
    assert cl.nodes[standby].link.counters.stale > 0
    assert fully_active(cl) == [standby]


@pytest.mark.parametrize("link", [True, False])
def test_a_powered_off_peer_that_rejoins_gets_its_port_back_once(link):
    """The survivor adopts the dead peer's portals, hands them back when it rejoins, and leaves them there."""
    cl = pair(port_takeover=True, peer_link=link, fast_takeover=link, failsafe=link)
    active, standby = active_and_standby(cl)
    cl.nodes[active].agent_running = False
    cl.nodes[active].forget()
    time_until_active(cl, standby, 6.0)
    assert cl.nodes[standby].peer_ports_hosted
    mark = len(cl.log)
    cl.quiesce()  # the powered-off controller boots and rejoins
    cl.advance(20.0)
    moves = [what for _, node, what in cl.log[mark:] if node == standby and "PeerPorts" in what]
    assert moves == ["ReleasePeerPorts"], moves
    assert cl.nodes[active].own_ports_up and not cl.nodes[standby].peer_ports_hosted
