"""decide() with the peer link: the fast takeover of a silent active, the ZooKeeper-outage failsafe, and the
promises that keep the two from ever making two actives. Each row says only what differs from a healthy pair
(tests/unit/builders.py); node a is the one deciding."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.core.actions import ClaimLeadership, FenceDeadPeer, FenceMode, FencePeer, TakeOverLeadership
from hacontrol.core.decide import Blocker, Reason, decide, link_advert
from hacontrol.core.model import FenceRecord, Leader, PeerLinkView, Role, SessionState
from tests.unit.builders import (
    AO,
    NOW,
    SB,
    T,
    active,
    names,
    peer_report,
    standby,
    with_coord,
    with_datapath,
    with_spec,
    with_storage,
)

LINKED = {"fast_takeover": True, "failsafe": True}
DEAD = T.peer_dead_after_s


def link(o, **kw):
    return replace(o, link=PeerLinkView(**{"heard": (NOW - 0.05, NOW - 0.05), **kw}))


def silent_active(**kw):
    """a is standby; b led under epoch 5 on the link and has been silent on both paths for dead_after."""
    o = with_spec(standby(), **LINKED)
    return link(o, heard=(NOW - DEAD - 0.01, NOW - DEAD - 0.1), peer_role=Role.ACTIVE, peer_epoch=5, peer_serving=True,
                leading_epoch=5, **kw)


# --- fast takeover ---------------------------------------------------------------------------------------

def test_a_silent_active_is_powered_off_then_taken_over_in_one_plan():
    plan = decide(with_coord(silent_active(), peer_alive_at=NOW - DEAD - 0.01), NOW, T)
    assert plan.reason is Reason.FAST_TAKEOVER and plan.role is Role.CANDIDATE
    fence, claim = [a for a in plan.actions if isinstance(a, FenceDeadPeer | TakeOverLeadership)]
    assert fence == FenceDeadPeer(6) and claim == TakeOverLeadership(5, "b")
    assert plan.actions.index(fence) < plan.actions.index(claim)


@pytest.mark.parametrize("why, obs", [
    ("heard just now on one path", link(silent_active(), heard=(NOW - DEAD, NOW - 0.05), leading_epoch=5)),
    ("never heard it lead under this epoch", link(silent_active(), heard=(NOW - 1, NOW - 1), leading_epoch=4)),
    ("never heard at all", link(silent_active(), heard=(None, None), leading_epoch=0)),
    ("no fast takeover configured", with_spec(silent_active(), fast_takeover=False)),
    ("we promised the active not to", link(silent_active(), heard=(NOW - 1, NOW - 1), leading_epoch=5,
                                           promised_until=NOW + 0.5)),
    ("no ZooKeeper to claim with", with_coord(silent_active(), session=SessionState.SUSPENDED)),
    ("disks not visible here", with_storage(silent_active(), visible=False)),
    ("the znode names someone else's epoch", with_coord(silent_active(), leader=Leader("b", 4, False))),
    ("ZooKeeper still sees it tick (only the link broke)", with_coord(silent_active(), peer_alive_at=NOW - 0.1)),
    ("we were stalled ourselves until just now", link(silent_active(), heard=(NOW - 1, NOW - 1), leading_epoch=5,
                                                      listening_since=NOW - 0.1)),
])
def test_no_fast_takeover(why, obs):
    plan = decide(obs, NOW, T)
    assert not any(isinstance(a, FenceDeadPeer | TakeOverLeadership) for a in plan.actions), why


def test_maintenance_freezes_a_fast_takeover_and_says_so():
    plan = decide(with_coord(silent_active(), maintenance=replace(silent_active().coord.maintenance, enabled=True)),
                  NOW, T)
    assert plan.reason is Reason.MAINTENANCE and [a.name for a in plan.frozen][-2:] == ["FenceDeadPeer",
                                                                                        "TakeOverLeadership"]


def test_after_a_fast_takeover_the_lingering_member_report_does_not_hold_up_port_adoption():
    """b's member znode stays until its session expires; power confirmed off under our epoch is enough."""
    o = with_spec(active(), port_takeover=True, **LINKED)
    o = with_coord(o, epoch=6, leader=Leader("a", 6, True), peer=peer_report(Role.ACTIVE, AO, vips=frozenset()))
    off = FenceRecord(6, True, NOW - 0.1, power_confirmed=True)
    o = with_storage(o, my_key_epoch=6, holder=("a", 6), last_fence=off)
    assert "AdoptPeerPorts" in names(decide(o, NOW, T))
    unconfirmed = with_storage(o, last_fence=FenceRecord(6, True, NOW - 0.1, power_confirmed=False))
    assert "AdoptPeerPorts" not in names(decide(unconfirmed, NOW, T))


# --- the failsafe ----------------------------------------------------------------------------------------

def lost_zookeeper(confirmed=NOW - 0.2, **kw):
    """a is the active of epoch 5, fenced, serving; ZooKeeper unreachable for longer than the lease; b (on the
    link) promised not to claim, answering a heartbeat a sent at ``confirmed``."""
    o = with_spec(active(), **LINKED)
    o = with_coord(o, session=SessionState.SUSPENDED, lease_confirmed_at=NOW - 5)
    return link(o, peer_role=Role.STANDBY, peer_epoch=5, promise_confirmed_at=confirmed, **kw)


def test_an_active_without_zookeeper_keeps_serving_on_the_peers_promise():
    plan = decide(lost_zookeeper(), NOW, T)
    assert plan.reason is Reason.FAILSAFE and plan.role is Role.ACTIVE
    assert plan.lease_valid_until == pytest.approx(NOW - 0.2 + T.demote_deadline_s)
    assert names(plan) == ["KickWatchdog"]  # kicked on a fresh promise as on a fresh lease


def test_a_promise_older_than_the_kick_window_keeps_serving_but_no_longer_kicks():
    plan = decide(lost_zookeeper(confirmed=NOW - T.kick_window_s - 0.05), NOW, T)
    assert plan.reason is Reason.FAILSAFE and names(plan) == []


@pytest.mark.parametrize("why, obs", [
    ("no promise", lost_zookeeper(confirmed=None)),
    ("the promise ran out", lost_zookeeper(confirmed=NOW - T.demote_deadline_s)),
    ("failsafe off", with_spec(lost_zookeeper(), failsafe=False)),
    ("someone preempted our key", with_storage(lost_zookeeper(), holder=("b", 6), my_key_epoch=None)),
    ("the peer leads a newer epoch", with_coord(lost_zookeeper(), session=SessionState.CONNECTED,
                                                lease_confirmed_at=NOW, leader=Leader("b", 6, False), epoch=6)),
])
def test_no_failsafe_means_stepping_down(why, obs):
    plan = decide(obs, NOW, T)
    assert plan.reason is not Reason.FAILSAFE and plan.role is Role.DEMOTING, why


def test_zookeeper_back_with_our_session_expired_leads_again_without_stepping_down():
    o = with_coord(lost_zookeeper(), session=SessionState.CONNECTED, lease_confirmed_at=NOW, leader=None)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.FAILSAFE and ClaimLeadership(5) in plan.actions
    assert not any(a.name in ("SetAlua", "RemoveVips") for a in plan.actions)
    # next tick: we lead epoch 6, still serve under the reservation of 5, and fence again under 6 (planned:
    # the peer is heard standing by) instead of stepping down as an unfenced server
    led = with_coord(o, leader=Leader("a", 6, True), epoch=6, peer=None)
    plan = decide(led, NOW, T)
    assert plan.reason is Reason.FENCING
    assert FencePeer(6, FenceMode.PLANNED) in plan.actions
    assert not any(a.name in ("RemoveVips", "SetAlua") for a in plan.actions)


def test_serving_under_an_epoch_two_behind_is_still_unfenced_serving():
    o = with_coord(active(), leader=Leader("a", 7, True), epoch=7)
    assert decide(o, NOW, T).reason is Reason.UNFENCED_SERVING


def test_the_active_asks_for_a_promise_only_while_its_lease_is_not_fresh():
    fresh = with_spec(active(), **LINKED)
    assert not link_advert(fresh, decide(fresh, NOW, T), NOW, T).want_promise
    stale = with_coord(fresh, lease_confirmed_at=NOW - 0.5)
    ad = link_advert(stale, decide(stale, NOW, T), NOW, T)
    assert ad.want_promise and ad.leading and ad.serving and not ad.may_promise


# --- the standby's promise ---------------------------------------------------------------------------------

def promised_standby():
    """a is standby; b's session expired (no leader znode, no member report) but b serves on a's promise."""
    o = with_spec(standby(), **LINKED)
    o = with_coord(o, leader=None, peer=None)
    return link(o, peer_role=Role.ACTIVE, peer_epoch=5, peer_serving=True, leading_epoch=5, promised_until=NOW + 1)


def test_a_standby_that_promised_does_not_claim_a_free_leader_znode():
    plan = decide(promised_standby(), NOW, T)
    assert plan.reason is Reason.PROMISED and plan.role is Role.STANDBY
    assert Blocker.PROMISED in plan.blockers
    assert not any(isinstance(a, ClaimLeadership) for a in plan.actions)


def test_once_the_promise_ran_out_and_the_peer_went_silent_it_claims():
    o = link(promised_standby(), heard=(NOW - 2, NOW - 2), promised_until=NOW - 0.01, leading_epoch=5)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.CLAIMING


def test_a_standby_keeps_presenting_the_failsafe_actives_group_as_active():
    """The peer's member znode is gone with its session, but it still serves: REPORT TARGET PORT GROUPS through
    the standby's ports must keep saying so."""
    o = with_datapath(promised_standby(), peer_group=AO)
    assert "SetAlua" not in names(decide(o, NOW, T))
    silent = link(o, heard=(NOW - 2, NOW - 2))
    plan = decide(silent, NOW, T)
    assert any(a.name == "SetAlua" and a.peer is SB for a in plan.actions)


def test_a_standby_may_promise_and_a_claiming_one_may_not():
    o = with_spec(standby(), **LINKED)
    assert link_advert(o, decide(o, NOW, T), NOW, T).may_promise
    free = with_coord(o, leader=None)
    plan = decide(free, NOW, T)
    assert plan.reason is Reason.CLAIMING and not link_advert(free, plan, NOW, T).may_promise


def test_a_peer_back_after_being_powered_off_in_this_epoch_is_not_adopted_again():
    """Seen in the rig: after handing the port back to a rejoined peer, the active adopted it again at once
    (its fence record of this epoch says "powered off"), and the two flapped until the peer gave up."""
    o = with_spec(active(), port_takeover=True, **LINKED)
    off = FenceRecord(6, True, NOW - 30, power_confirmed=True)
    o = with_storage(with_coord(o, epoch=6, leader=Leader("a", 6, True)), my_key_epoch=6, holder=("a", 6),
                     last_fence=off)
    back = with_coord(o, peer=peer_report(Role.STANDBY, SB, epoch_seen=6))
    assert "AdoptPeerPorts" not in names(decide(back, NOW, T))
    lingering = with_coord(o, peer=peer_report(Role.ACTIVE, AO, epoch_seen=5, vips=frozenset()))
    assert "AdoptPeerPorts" in names(decide(lingering, NOW, T))


def test_a_stopping_agent_says_it_stepped_down_only_once_it_serves_nothing():
    from hacontrol.core.peer import stepped_down
    from tests.unit.builders import SB, active, with_datapath

    assert stepped_down(active()) is None  # a step failed: its ports still serve
    said = stepped_down(with_datapath(active(), own_group=SB, vips=frozenset()))
    assert said is not None and said.role is Role.STANDBY and not (said.serving or said.leading)
    assert not (said.want_promise or said.may_promise) and said.epoch == active().coord.epoch
