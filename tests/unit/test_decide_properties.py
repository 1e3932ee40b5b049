"""Properties of decide() over arbitrary observations (hypothesis builds the snapshots)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hacontrol.core import actions as A
from hacontrol.core.decide import decide
from hacontrol.core.model import (
    AluaState,
    Coordination,
    DataPath,
    FenceRecord,
    Leader,
    Maintenance,
    Observation,
    PeerReport,
    Role,
    SessionState,
    Spec,
    Storage,
    SwitchoverIntent,
)
from hacontrol.core.timing import Timing

T = Timing()
NOW = 1000.0
states = st.sampled_from(list(AluaState))
vipsets = st.sampled_from([frozenset(), frozenset({"v1"}), frozenset({"v1", "v2"})])
epochs = st.integers(0, 4)

observations = st.builds(
    Observation,
    spec=st.builds(Spec, node=st.just("a"), peer=st.just("b"), vips=st.just(frozenset({"v1", "v2"})),
                   alua=st.booleans(), fencing_configured=st.booleans(), power_fencing=st.booleans(),
                   port_takeover=st.booleans()),
    coord=st.builds(
        Coordination,
        session=st.sampled_from(list(SessionState)),
        lease_confirmed_at=st.one_of(st.none(), st.floats(NOW - 5, NOW)),
        leader=st.one_of(st.none(), st.builds(Leader, st.sampled_from(["a", "b"]), epochs, st.booleans())),
        epoch=epochs,
        peer=st.one_of(st.none(), st.builds(PeerReport, st.just("b"), st.sampled_from(list(Role)),
                                            st.one_of(st.none(), states), vipsets, st.booleans(), epochs,
                                            st.one_of(st.none(), st.just("i1")), st.booleans())),
        switchover=st.one_of(st.none(), st.builds(SwitchoverIntent, st.just("i1"), st.sampled_from(["a", "b"]),
                                                  st.floats(NOW - 5, NOW + 5))),
        maintenance=st.builds(Maintenance, st.booleans()),
    ),
    storage=st.builds(Storage, pr=st.booleans(), visible=st.booleans(), my_key_epoch=st.one_of(st.none(), epochs),
                      holder=st.one_of(st.none(), st.tuples(st.sampled_from(["a", "b"]), epochs)),
                      stale_peer_key=st.booleans(),
                      last_fence=st.one_of(st.none(), st.builds(FenceRecord, epochs, st.booleans(),
                                                                st.floats(NOW - 5, NOW)))),
    datapath=st.builds(DataPath, configured=st.booleans(), own_group=st.one_of(st.none(), states),
                       peer_group=st.one_of(st.none(), states), vips=vipsets, own_ports_up=st.booleans(),
                       peer_ports_hosted=st.booleans()),
    watchdog_armed=st.booleans(),
)


def _promotes(a: A.Action) -> bool:
    return isinstance(a, A.SetAlua | A.AddVips | A.AdoptPeerPorts) and a.needs_lease


@given(observations)
def test_promoting_steps_only_under_our_own_valid_lease(o):
    plan = decide(o, NOW, T)
    if any(a.needs_lease for a in plan.actions):
        c = o.coord
        assert c.leader is not None and c.leader.ours and c.leader.node == "a" and c.leader.epoch == c.epoch
        assert c.session is SessionState.CONNECTED
        assert plan.lease_valid_until is not None and plan.lease_valid_until > NOW


@given(observations)
def test_nothing_is_promoted_before_a_fence_under_the_current_epoch(o):
    plan = decide(o, NOW, T)
    promoting = [i for i, a in enumerate(plan.actions) if _promotes(a)]
    if not promoting:
        return
    fences = [i for i, a in enumerate(plan.actions) if isinstance(a, A.FencePeer)]
    already = (o.storage.last_fence is not None and o.storage.last_fence.ok
               and o.storage.last_fence.epoch == o.coord.epoch)
    assert already or (fences and fences[0] < promoting[0])
    assert all(a.epoch == o.coord.epoch for a in plan.actions if isinstance(a, A.FencePeer))


@given(observations)
def test_own_group_is_only_ever_set_to_pdl_safe_states(o):
    for a in decide(o, NOW, T).actions:
        if isinstance(a, A.SetAlua):
            assert a.own in (AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY, AluaState.TRANSITIONING)


@given(observations)
def test_decide_is_deterministic(o):
    assert decide(o, NOW, T) == decide(o, NOW, T)


@given(observations)
def test_maintenance_only_lets_safety_and_reporting_through(o):
    plan = decide(o, NOW, T)
    if o.coord.maintenance.enabled and plan.reason.value not in (
            "no_session", "lease_expired", "superseded", "key_lost", "unfenced_serving"):
        assert not any(isinstance(a, A.ClaimLeadership | A.FencePeer | A.AddVips) for a in plan.actions)


@given(observations)
def test_kicks_only_right_after_a_confirmation(o):
    """A lease ZooKeeper confirmed or a promise the peer answered, within the kick window."""
    plan = decide(o, NOW, T)
    if any(isinstance(a, A.KickWatchdog) for a in plan.actions):
        fresh = [t for t in (o.coord.lease_confirmed_at, o.link.promise_confirmed_at) if t is not None]
        assert any(NOW - t <= T.kick_window_s for t in fresh)
