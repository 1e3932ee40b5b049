"""Table-driven tests of decide(): one block per safety rule of docs/architecture.md."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.core import actions as A
from hacontrol.core.decide import Blocker, Reason, awaits_hand_over, decide, shutdown_again
from hacontrol.core.model import FenceRecord, Leader, Maintenance, PeerLinkView, PeerReport, Role, SessionState
from tests.unit.builders import (
    AO,
    NOW,
    SB,
    TR,
    VIPS,
    T,
    active,
    intent,
    names,
    peer_report,
    standby,
    with_coord,
    with_datapath,
    with_spec,
    with_storage,
)

# --- rule 1: epoch and lease before everything ----------------------------------------------------


def test_healthy_active_only_kicks_the_watchdog():
    plan = decide(active(), NOW, T)
    assert plan.reason is Reason.ACTIVE and plan.role is Role.ACTIVE
    assert names(plan) == ["KickWatchdog"]
    assert plan.lease_valid_until == NOW + T.demote_deadline_s


def test_healthy_standby_does_nothing():
    plan = decide(standby(), NOW, T)
    assert plan.reason is Reason.STANDBY and names(plan) == []


@pytest.mark.parametrize("session", [SessionState.SUSPENDED, SessionState.CONNECTED])
def test_active_steps_down_when_lease_runs_out(session):
    o = with_coord(active(), session=session, lease_confirmed_at=NOW - T.demote_deadline_s)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.LEASE_EXPIRED and plan.role is Role.DEMOTING
    assert names(plan) == ["SetAlua", "RemoveVips", "DisarmWatchdog"]
    assert plan.actions[0] == A.SetAlua(own=SB, peer=SB)
    assert all(not a.needs_lease for a in plan.actions)


def test_suspended_within_deadline_holds_without_kicking():
    o = with_coord(active(), session=SessionState.SUSPENDED, lease_confirmed_at=NOW - 0.5)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.SUSPENDED_HOLDING and plan.actions == ()


def test_no_watchdog_kick_on_a_stale_confirmation():
    o = with_coord(active(), lease_confirmed_at=NOW - T.kick_window_s - 0.01)
    assert "KickWatchdog" not in names(decide(o, NOW, T))


def test_a_slow_round_trip_with_a_fresh_promise_still_kicks_and_before_any_slow_step():
    """The lease is valid but its confirmation is older than the kick window (a slow round trip right after
    ZooKeeper returned); the peer answered a promise just now: the kick goes out, first, so a healthy active
    is not reset by its own watchdog for a slow round trip."""
    slow = with_datapath(with_coord(active(), lease_confirmed_at=NOW - T.kick_window_s - 0.1), configured=False)
    o = replace(slow, link=PeerLinkView(heard=(NOW - 0.05, NOW - 0.05), promise_confirmed_at=NOW - 0.05))
    assert names(decide(o, NOW, T))[:2] == ["KickWatchdog", "ConfigureTarget"]
    assert "KickWatchdog" not in names(decide(slow, NOW, T))


def test_a_kick_carries_the_last_instant_its_freshest_confirmation_allows():
    lease = NOW - 0.2
    o = with_coord(active(), lease_confirmed_at=lease)
    kick = decide(o, NOW, T).actions[0]
    assert isinstance(kick, A.KickWatchdog) and kick.until == pytest.approx(lease + T.kick_window_s)
    promised = replace(o, link=PeerLinkView(heard=(NOW, NOW), promise_confirmed_at=NOW - 0.05))
    kick = decide(promised, NOW, T).actions[0]
    assert isinstance(kick, A.KickWatchdog) and kick.until == pytest.approx(NOW - 0.05 + T.kick_window_s)


@pytest.mark.parametrize(
    ("coord", "reason"),
    [
        ({"session": SessionState.LOST}, Reason.NO_SESSION),
        ({"leader": Leader("a", 5, False)}, Reason.SUPERSEDED),  # our name, an older session's znode
        ({"leader": Leader("b", 6, False), "epoch": 6}, Reason.SUPERSEDED),
        ({"leader": Leader("a", 5, True), "epoch": 6}, Reason.SUPERSEDED),  # epoch moved past our claim
        ({"lease_confirmed_at": None}, Reason.NO_SESSION),
    ],
)
def test_serving_without_the_lease_steps_down(coord, reason):
    plan = decide(with_coord(active(), **coord), NOW, T)
    assert plan.reason is reason
    assert names(plan)[:2] == ["SetAlua", "RemoveVips"]


def test_step_down_on_vip_only_backend_removes_addresses():
    o = with_coord(with_spec(active(), alua=False), session=SessionState.LOST)
    o = with_datapath(o, own_group=None, peer_group=None)
    assert names(decide(o, NOW, T)) == ["RemoveVips", "DisarmWatchdog"]


def test_step_down_releases_adopted_peer_ports():
    o = with_datapath(with_coord(active(), session=SessionState.LOST), peer_ports_hosted=True)
    assert "ReleasePeerPorts" in names(decide(o, NOW, T))


# --- rule 2: fence before promote ------------------------------------------------------------------


def new_leader(**kw):
    """Node a just won the election at epoch 6; the peer vanished; nothing promoted yet."""
    o = standby(**kw)
    o = with_coord(o, leader=Leader("a", 6, True), epoch=6, peer=None)
    return with_datapath(with_storage(o, my_key_epoch=5, holder=("b", 5)), peer_group=SB)


def test_takeover_plan_is_fence_then_alua_then_addresses():
    plan = decide(new_leader(), NOW, T)
    assert plan.reason is Reason.FENCING and plan.role is Role.PROMOTING
    assert names(plan) == ["ArmWatchdog", "FencePeer", "SetAlua", "AddVips"]
    fence, alua, vips = plan.actions[1:4]
    assert fence == A.FencePeer(6, A.FenceMode.UNPLANNED)
    assert alua == A.SetAlua(own=AO, peer=SB) and vips == A.AddVips(VIPS)
    assert fence.needs_lease and alua.needs_lease and vips.needs_lease


def test_planned_fence_when_peer_is_alive_and_serves_nothing():
    o = with_coord(new_leader(), peer=peer_report(handed_off="i1"))
    assert decide(o, NOW, T).actions[1] == A.FencePeer(6, A.FenceMode.PLANNED)


def test_peer_alive_but_still_serving_gets_unplanned_fencing():
    o = with_coord(new_leader(), peer=peer_report(Role.ACTIVE, AO, vips=VIPS))
    assert decide(o, NOW, T).actions[1] == A.FencePeer(6, A.FenceMode.UNPLANNED)


def test_failed_fence_backs_off_then_retries():
    failed = FenceRecord(6, False, NOW - 0.2)
    o = with_storage(new_leader(), last_fence=failed)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.FENCE_BACKOFF
    assert not any(isinstance(a, A.FencePeer | A.SetAlua | A.AddVips) for a in plan.actions)
    later = NOW + T.fence_retry_s
    assert "FencePeer" in names(decide(with_coord(o, lease_confirmed_at=later), later, T))


def test_fenced_leader_promotes_without_fencing_again():
    o = with_storage(new_leader(), my_key_epoch=6, holder=("a", 6), last_fence=FenceRecord(6, True, NOW - 0.1))
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.PROMOTING and names(plan) == ["ArmWatchdog", "SetAlua", "AddVips"]


def test_fence_record_of_an_older_epoch_does_not_count():
    o = with_storage(new_leader(), my_key_epoch=6, holder=("a", 6), last_fence=FenceRecord(5, True, NOW - 9))
    assert "FencePeer" in names(decide(o, NOW, T))


def test_stale_peer_key_forces_a_new_fence():
    o = with_storage(new_leader(), my_key_epoch=6, holder=("a", 6), last_fence=FenceRecord(6, True, NOW - 0.1),
                     stale_peer_key=True)
    assert "FencePeer" in names(decide(o, NOW, T))


def test_serving_under_an_epoch_we_never_fenced_steps_down_first():
    o = with_datapath(new_leader(), own_group=AO, vips=VIPS)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.UNFENCED_SERVING and "FencePeer" not in names(plan)


def test_key_lost_steps_down_and_gives_up_leadership():
    o = with_storage(active(), my_key_epoch=None, holder=("b", 6))
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.KEY_LOST
    assert names(plan) == ["SetAlua", "RemoveVips", "KeyLost", "DisarmWatchdog", "ReleaseLeadership"]
    assert plan.actions[2] == A.KeyLost("standby")


def test_lease_bound_actions_carry_the_lease_end():
    plan = decide(with_coord(new_leader(), lease_confirmed_at=NOW - 0.3), NOW, T)
    assert plan.lease_valid_until == pytest.approx(NOW - 0.3 + T.demote_deadline_s)


# --- rule 3: suspended or unknown sessions start nothing -------------------------------------------


def test_standby_does_not_claim_while_suspended():
    o = with_coord(standby(), session=SessionState.SUSPENDED, leader=None)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.NO_SESSION and "ClaimLeadership" not in names(plan)


def test_standby_claims_when_the_leader_znode_is_gone():
    o = with_coord(standby(), leader=None, peer=None)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.CLAIMING and plan.actions[-2] == A.ClaimLeadership(5)


@pytest.mark.parametrize(
    ("change", "blocker"),
    [
        (lambda o: with_storage(o, visible=False), Blocker.STORAGE_NOT_VISIBLE),
        (lambda o: with_datapath(o, configured=False), Blocker.NOT_CONFIGURED),
        (lambda o: with_spec(o, fencing_configured=False), Blocker.FENCING_NOT_CONFIGURED),
    ],
)
def test_standby_that_cannot_take_over_safely_does_not_claim(change, blocker):
    o = change(with_coord(standby(), leader=None, peer=None))
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.NOT_READY and blocker in plan.blockers


def test_without_fencing_a_planned_handover_may_still_be_claimed():
    o = with_spec(with_coord(standby(), leader=None, peer=peer_report(handed_off="i1"),
                             switchover=intent("a")), fencing_configured=False)
    assert decide(o, NOW, T).reason is Reason.CLAIMING


# --- rule 4: never cause PDL ------------------------------------------------------------------------


def test_standby_mirrors_the_active_group_and_keeps_its_own_standby():
    o = with_datapath(standby(), own_group=TR, peer_group=SB)
    plan = decide(o, NOW, T)
    assert plan.actions[0] == A.SetAlua(own=SB, peer=AO)


def test_standby_mirrors_transitioning_during_a_handover():
    o = with_coord(standby(), peer=peer_report(Role.DEMOTING, TR))
    assert decide(o, NOW, T).actions[0] == A.SetAlua(own=SB, peer=TR)


def test_standby_registers_its_key_under_the_current_epoch_once_settled():
    o = with_storage(standby(), my_key_epoch=4)
    assert decide(o, NOW, T).actions[0] == A.RegisterStandby(5)
    unsettled = with_datapath(o, alua_changed_at=NOW - T.standby_settle_s / 2)
    assert "RegisterStandby" not in names(decide(unsettled, NOW, T))


def test_standby_without_pr_never_registers():
    o = with_storage(standby(), pr=False, my_key_epoch=None)
    assert "RegisterStandby" not in names(decide(o, NOW, T))


# --- rule 5: maintenance freezes automation, not safety ----------------------------------------------


def test_maintenance_freezes_a_takeover_and_reports_it():
    o = with_coord(standby(), leader=None, peer=None, maintenance=Maintenance(True, "disk swap", "ops"))
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.MAINTENANCE
    assert "ClaimLeadership" not in names(plan)
    assert "ClaimLeadership" in [a.name for a in plan.frozen]
    assert Blocker.MAINTENANCE in plan.blockers


def test_maintenance_never_keeps_a_stale_active_serving():
    o = with_coord(active(), session=SessionState.SUSPENDED, lease_confirmed_at=NOW - 5,
                   maintenance=Maintenance(True))
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.LEASE_EXPIRED and names(plan)[:2] == ["SetAlua", "RemoveVips"]


def test_maintenance_keeps_kicking_a_valid_lease():
    plan = decide(with_coord(active(), maintenance=Maintenance(True)), NOW, T)
    assert names(plan) == ["KickWatchdog"]


# --- planned switchover ---------------------------------------------------------------------------


def test_handover_is_ordered_transitioning_cut_standby_publish_release():
    o = with_coord(active(), switchover=intent("b"))
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.HANDING_OFF
    steps = [a for a in plan.actions if not isinstance(a, A.KickWatchdog)]
    assert steps[0] == A.SetAlua(own=TR, peer=SB)
    assert steps[1] == A.RemoveVips(VIPS)
    assert steps[2] == A.SetAlua(own=SB, peer=SB)
    assert isinstance(steps[3], A.Publish) and steps[3].handed_off == "i1" and steps[3].vips == frozenset()
    assert steps[4] == A.ReleaseLeadership(5)
    assert isinstance(steps[5], A.DisarmWatchdog)


@pytest.mark.parametrize(
    ("coord", "why"),
    [
        ({"peer": None}, "no live ZooKeeper session"),
        ({"peer": peer_report(ready=False)}, "not ready"),
        ({"peer": peer_report(Role.STARTING, None)}, "is starting"),
        ({"switchover": intent("b", deadline=NOW - 1)}, "deadline passed"),
        ({"switchover": intent("zz")}, "unknown node"),
    ],
)
def test_switchover_refusals_name_the_reason(coord, why):
    o = with_coord(with_coord(active(), switchover=intent("b")), **coord)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.SWITCHOVER_REFUSED
    finish = [a for a in plan.actions if isinstance(a, A.FinishSwitchover)]
    assert finish and finish[0].outcome == "refused" and why in finish[0].reason
    assert "RemoveVips" not in names(plan)


def test_old_active_waits_for_the_target_instead_of_reclaiming():
    o = with_datapath(with_coord(standby(), leader=None, switchover=intent("b"),
                                 peer=peer_report()), peer_group=SB)
    assert decide(o, NOW, T).reason is Reason.WAITING_FOR_SWITCHOVER


def test_target_claims_after_the_handover():
    o = with_coord(standby(), leader=None, switchover=intent("a"), peer=peer_report(handed_off="i1"))
    assert decide(o, NOW, T).reason is Reason.CLAIMING


def test_new_active_finishes_the_switchover_once_fully_promoted():
    o = with_coord(active(), switchover=intent("a"))
    plan = decide(o, NOW, T)
    assert A.FinishSwitchover("i1", "done") in plan.actions


# --- publishing -----------------------------------------------------------------------------------


def test_publishes_only_when_the_report_changes():
    plan = decide(active(), NOW, T)
    pub = [a for a in plan.actions if isinstance(a, A.Publish)]
    assert pub and pub[0].role is Role.ACTIVE and pub[0].own_alua is AO
    same = PeerReport("a", Role.ACTIVE, AO, VIPS, True, 5, None, False, False, "active")
    plan2 = decide(with_coord(active(), published=same), NOW, T)
    assert not any(isinstance(a, A.Publish) for a in plan2.actions)


def test_nothing_is_published_without_a_session():
    plan = decide(with_coord(standby(), session=SessionState.SUSPENDED), NOW, T)
    assert not any(isinstance(a, A.Publish) for a in plan.actions)


def test_a_shorter_granted_session_voids_the_lease_and_blocks_claims():
    short = T.session_timeout_s / 2
    plan = decide(with_coord(active(), granted_timeout_s=short), NOW, T)
    assert plan.reason is Reason.SUPERSEDED or plan.reason is Reason.LEASE_EXPIRED or plan.role is Role.DEMOTING
    assert names(plan)[:2] == ["SetAlua", "RemoveVips"]
    o = with_coord(standby(), leader=None, peer=None, granted_timeout_s=short)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.NOT_READY and Blocker.SESSION_TIMEOUT_MISMATCH in plan.blockers


def test_shutdown_of_the_active_hands_over_in_order():
    from hacontrol.core.decide import shutdown_plan

    plan = shutdown_plan(active())
    assert [a.name for a in plan.actions] == ["SetAlua", "RemoveVips", "SetAlua", "Publish", "ReleaseLeadership",
                                              "DisarmWatchdog"]
    assert plan.actions[0] == A.SetAlua(own=TR, peer=SB)
    assert plan.actions[3].handed_off == "shutdown"


def test_a_hand_over_report_never_claims_the_peers_portals_it_releases_first():
    """Seen in the rig: stopping an active that still hosted its peer's portals (just rejoined, not yet handed
    back) published "hosts_peer_ports" with its hand-off, and the peer power-fenced it as a dead controller."""
    from hacontrol.core.decide import shutdown_plan

    o = with_datapath(with_spec(active(), port_takeover=True), peer_ports_hosted=True)
    plan = shutdown_plan(o)
    names_ = [a.name for a in plan.actions]
    assert names_.index("ReleasePeerPorts") < names_.index("Publish")
    publish = next(a for a in plan.actions if isinstance(a, A.Publish))
    assert publish.handed_off == "shutdown" and not publish.hosts_peer_ports
    switchover = with_coord(o, switchover=intent("b"))
    publish = next(a for a in decide(switchover, NOW, T).actions if isinstance(a, A.Publish))
    assert publish.handed_off == "i1" and not publish.hosts_peer_ports


def test_shutdown_of_a_standby_only_publishes():
    from hacontrol.core.decide import shutdown_plan

    assert [a.name for a in shutdown_plan(standby()).actions] == ["Publish"]


def test_active_reannounces_its_vips_periodically():
    o = with_spec(active(), announce_every_s=10.0)
    assert A.AnnounceVips(VIPS) in decide(o, NOW, T).actions  # never announced in this process
    recent = with_datapath(o, announced_at=NOW - 3)
    assert not any(isinstance(a, A.AnnounceVips) for a in decide(recent, NOW, T).actions)
    due = with_datapath(o, announced_at=NOW - 10)
    assert A.AnnounceVips(VIPS) in decide(due, NOW, T).actions
    off = with_spec(due, announce_every_s=0.0)
    assert not any(isinstance(a, A.AnnounceVips) for a in decide(off, NOW, T).actions)


def test_a_stale_peer_key_while_serving_is_fenced_again_not_a_failover():
    o = with_storage(active(), stale_peer_key=True)
    plan = decide(o, NOW, T)
    assert plan.reason is Reason.FENCING
    fence = next(a for a in plan.actions if isinstance(a, A.FencePeer))
    assert fence == A.FencePeer(5, A.FenceMode.PLANNED)  # the peer is alive and serves nothing: no power
    assert "RemoveVips" not in names(plan) and "ReleaseLeadership" not in names(plan)


def test_an_active_that_lost_its_disks_hands_over_to_a_ready_standby():
    lost = with_storage(active(), visible=False, invisible_since=NOW - T.storage_grace_s)
    plan = decide(lost, NOW, T)
    assert plan.reason is Reason.STORAGE_LOST
    assert [a.name for a in plan.actions if a.name != "KickWatchdog"][:2] == ["SetAlua", "RemoveVips"]
    assert plan.actions[0] == A.SetAlua(own=TR, peer=SB)
    assert A.ReleaseLeadership(5) in plan.actions
    glitch = with_storage(active(), visible=False, invisible_since=NOW - T.storage_grace_s / 2)
    assert decide(glitch, NOW, T).reason is not Reason.STORAGE_LOST
    alone = with_coord(lost, peer=None)  # nobody better to hand over to: stay
    assert decide(alone, NOW, T).reason is not Reason.STORAGE_LOST


@pytest.mark.parametrize("takeover, own_portals", [(True, False), (False, True), (True, True)])
def test_a_standby_brings_its_own_portals_up_with_or_without_port_takeover(takeover, own_portals):
    obs = with_spec(with_datapath(standby(), own_ports_up=False), port_takeover=takeover, own_portals=own_portals)
    assert "BringUpOwnPorts" in names(decide(obs, NOW, T))


def test_a_standby_whose_session_lapses_gives_its_portals_up_before_the_peer_may_adopt_them():
    base = with_spec(standby(), port_takeover=True)
    suspended = with_coord(base, session=SessionState.SUSPENDED, lease_confirmed_at=NOW - T.demote_deadline_s / 2)
    assert "TakeDownOwnPorts" not in names(decide(suspended, NOW, T))  # a blip: the session may come back
    lapsed = with_coord(base, session=SessionState.SUSPENDED, lease_confirmed_at=NOW - T.demote_deadline_s)
    plan = decide(lapsed, NOW, T)
    assert plan.reason is Reason.NO_SESSION and "TakeDownOwnPorts" in names(plan)
    assert "TakeDownOwnPorts" not in names(decide(with_datapath(lapsed, own_ports_up=False), NOW, T))
    # without port takeover nobody adopts them: a standby keeps its portals through the outage
    assert "TakeDownOwnPorts" not in names(decide(with_spec(lapsed, port_takeover=False, own_portals=True), NOW, T))
    # a process that never had a session has not brought its portals up: nothing to give up
    starting = with_coord(base, session=SessionState.LOST, lease_confirmed_at=None)
    assert "TakeDownOwnPorts" not in names(decide(starting, NOW, T))


def test_a_standby_back_from_an_outage_gives_up_portals_the_peer_adopted_meanwhile():
    peer = peer_report(Role.ACTIVE, AO, vips=VIPS, hosts_peer_ports=True)
    back = with_coord(with_spec(standby(), port_takeover=True), peer=peer)
    assert "TakeDownOwnPorts" in names(decide(back, NOW, T))
    down = with_datapath(back, own_ports_up=False)
    assert not {"TakeDownOwnPorts", "BringUpOwnPorts"} & set(names(decide(down, NOW, T)))  # wait for the hand-back


def test_an_active_leading_again_after_a_quorum_loss_brings_its_own_portals_back():
    # it gave them up while its session was unconfirmed; the session survived, so it leads again
    back = with_datapath(with_spec(active(), port_takeover=True), own_ports_up=False)
    assert "BringUpOwnPorts" in names(decide(back, NOW, T))
    assert "BringUpOwnPorts" not in names(decide(with_spec(active(), port_takeover=True), NOW, T))


def test_without_managed_portals_nothing_is_brought_up():
    obs = with_spec(with_datapath(standby(), own_ports_up=False), port_takeover=False, own_portals=False)
    assert "BringUpOwnPorts" not in names(decide(obs, NOW, T))


def test_a_stop_hands_over_only_if_it_led_and_zookeeper_still_hears_it():
    led, suspended = active(), with_coord(active(), session=SessionState.SUSPENDED)
    assert awaits_hand_over(led, led)
    assert not awaits_hand_over(led, suspended)  # the release cannot go out: the session's end says it
    assert not awaits_hand_over(standby(), standby())
    assert shutdown_again(suspended, led) and not shutdown_again(led, led) and not shutdown_again(suspended, suspended)


# --- the initiators' persistent reservations (LIO: adapters/lio/prsync.py) --------------------------------------


def test_a_new_leader_loads_the_published_reservations_after_the_fence_and_before_its_ports_serve():
    plan = decide(with_datapath(new_leader(), pr_loaded_epoch=5), NOW, T)
    assert names(plan) == ["ArmWatchdog", "FencePeer", "LoadReservations", "SetAlua", "AddVips"]
    assert plan.actions[2] == A.LoadReservations(6, keep_local=False)


def test_a_backend_without_reservations_of_its_own_never_loads_or_publishes():
    plan = decide(with_datapath(new_leader(), pr_loaded_epoch=None, pr_unpublished=True), NOW, T)
    assert not any(isinstance(a, A.LoadReservations | A.PublishReservations) for a in plan.actions)


def test_an_active_that_served_under_this_epoch_before_a_restart_keeps_its_own_reservations():
    o = with_datapath(active(), pr_loaded_epoch=0)
    plan = decide(o, NOW, T)
    assert A.LoadReservations(5, keep_local=True) in plan.actions
    assert "SetAlua" not in names(plan)


def test_the_active_publishes_changed_reservations_first_and_only_once_loaded():
    o = with_datapath(active(), pr_loaded_epoch=5, pr_unpublished=True, vips=frozenset())
    plan = decide(o, NOW, T)
    assert names(plan)[:2] == ["KickWatchdog", "PublishReservations"]  # before AddVips, which may fail
    assert plan.actions[1] == A.PublishReservations(5)
    unfenced = with_storage(with_datapath(new_leader(), pr_loaded_epoch=6, pr_unpublished=True), last_fence=None)
    assert "PublishReservations" not in names(decide(unfenced, NOW, T))
    not_loaded = with_datapath(active(), pr_loaded_epoch=4, pr_unpublished=True)
    assert "PublishReservations" not in names(decide(not_loaded, NOW, T))
    unchanged = with_datapath(active(), pr_loaded_epoch=5, pr_unpublished=False)
    assert "PublishReservations" not in names(decide(unchanged, NOW, T))


def test_a_hand_over_publishes_the_reservations_once_more_after_its_ports_are_down():
    o = with_datapath(with_coord(active(), switchover=intent("b")), pr_loaded_epoch=5)
    steps = [a.name for a in decide(o, NOW, T).actions if not isinstance(a, A.KickWatchdog)]
    assert steps == ["SetAlua", "RemoveVips", "SetAlua", "PublishReservations", "Publish", "ReleaseLeadership",
                     "DisarmWatchdog"]
    from hacontrol.core.decide import shutdown_plan

    assert [a.name for a in shutdown_plan(with_datapath(active(), pr_loaded_epoch=5)).actions] == [
        "SetAlua", "RemoveVips", "SetAlua", "PublishReservations", "Publish", "ReleaseLeadership", "DisarmWatchdog"]
