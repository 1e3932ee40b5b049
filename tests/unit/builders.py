"""Terse builders for observations, so each table row says only what differs from a healthy pair."""

from __future__ import annotations

from dataclasses import replace

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

AO, SB, TR = AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY, AluaState.TRANSITIONING
T = Timing()
NOW = 100.0
VIPS = frozenset({"192.0.2.10/24"})


def peer_report(role: Role = Role.STANDBY, alua: AluaState | None = SB, **kw) -> PeerReport:
    return PeerReport(node="b", role=role, own_alua=alua, ready=kw.pop("ready", True), **kw)


def standby(**kw) -> Observation:
    """Node a, healthy standby; the peer b leads at epoch 5."""
    return _build(leader=Leader("b", 5, False), own=SB, peer_group=AO, vips=frozenset(),
                  peer=peer_report(Role.ACTIVE, AO, vips=VIPS), my_key=5, holder=("b", 5), fence=None, **kw)


def active(**kw) -> Observation:
    """Node a, healthy active at epoch 5, fenced, AO, VIPs up, watchdog armed."""
    return _build(leader=Leader("a", 5, True), own=AO, peer_group=SB, vips=VIPS, peer=peer_report(),
                  my_key=5, holder=("a", 5), fence=FenceRecord(5, True, NOW - 50), watchdog=True, **kw)


def _build(*, leader, own, peer_group, vips, peer, my_key, holder, fence, watchdog=False,
           session=SessionState.CONNECTED, confirmed=NOW, epoch=5, maintenance=False, switchover=None, spec=None,
           visible=True, pr=True, configured=True, published=None, alua_changed_at=None,
           stale_peer_key=False) -> Observation:
    spec = spec or Spec(node="a", peer="b", vips=VIPS)
    coord = Coordination(session=session, lease_confirmed_at=confirmed, leader=leader, epoch=epoch, peer=peer,
                         switchover=switchover, maintenance=Maintenance(maintenance), published=published)
    storage = Storage(pr=pr, visible=visible, my_key_epoch=my_key, holder=holder, stale_peer_key=stale_peer_key,
                      last_fence=fence)
    datapath = DataPath(configured=configured, own_group=own if spec.alua else None,
                        peer_group=peer_group if spec.alua else None, alua_changed_at=alua_changed_at, vips=vips)
    return Observation(spec=spec, coord=coord, storage=storage, datapath=datapath, watchdog_armed=watchdog)


def with_coord(o: Observation, **kw) -> Observation:
    return replace(o, coord=replace(o.coord, **kw))


def with_storage(o: Observation, **kw) -> Observation:
    return replace(o, storage=replace(o.storage, **kw))


def with_datapath(o: Observation, **kw) -> Observation:
    return replace(o, datapath=replace(o.datapath, **kw))


def with_spec(o: Observation, **kw) -> Observation:
    return replace(o, spec=replace(o.spec, **kw))


def intent(target: str, deadline: float = NOW + 30, state: str = "pending") -> SwitchoverIntent:
    return SwitchoverIntent("i1", target, deadline, state)


def names(plan) -> list[str]:
    return [a.name for a in plan.actions if a.name != "Publish"]
