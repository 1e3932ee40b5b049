"""Our member report (the ``Publish`` action): what the peer and operators see of this controller in
ZooKeeper. ``decide`` appends one to a plan whenever what we are has changed."""

from __future__ import annotations

from dataclasses import replace

from hacontrol.core.actions import Publish
from hacontrol.core.model import AluaState, Observation, PeerReport, Role, SessionState
from hacontrol.core.plan import Plan, Reason


def report(obs: Observation, role: Role, own_alua: AluaState | None, vips: frozenset[str], *,
            handed_off: str | None = None, plan: Plan | None = None) -> Publish:
    s, d, c = obs.storage, obs.datapath, obs.coord
    return Publish(
        role=role,
        own_alua=own_alua,
        vips=vips,
        ready=s.visible and d.configured,
        epoch_seen=c.epoch,
        handed_off=handed_off,
        # A hand-off report goes out only after every step-down step succeeded (the executor skips it after a
        # failure), ReleasePeerPorts among them: saying we still host the peer's portals would make the peer
        # fence us as a dead controller (power off) instead of the planned way.
        hosts_peer_ports=d.peer_ports_hosted and handed_off is None,
        maintenance_seen=c.maintenance.enabled,
        reason=plan.reason.value if plan else Reason.HANDING_OFF.value,
        blockers=tuple(b.value for b in plan.blockers) if plan else (),
        frozen=tuple(a.name for a in plan.frozen) if plan else (),
    )


def with_publish(plan: Plan, obs: Observation) -> Plan:
    """Append a Publish of what we are now, unless the plan already publishes or nothing changed."""
    if obs.coord.session is not SessionState.CONNECTED:
        return plan
    if any(isinstance(a, Publish) for a in plan.actions):
        return plan
    mine = report(obs, plan.role, obs.datapath.own_group, obs.datapath.vips, plan=plan)
    pub = obs.coord.published
    if pub is not None and _same_report(pub, mine):
        return plan
    return replace(plan, actions=(*plan.actions, mine))


def _same_report(pub: PeerReport, mine: Publish) -> bool:
    return (pub.role, pub.own_alua, pub.vips, pub.ready, pub.epoch_seen, pub.handed_off,
            pub.hosts_peer_ports, pub.maintenance_seen, pub.reason, pub.blockers, pub.frozen) == (
        mine.role, mine.own_alua, mine.vips, mine.ready, mine.epoch_seen, mine.handed_off,
        mine.hosts_peer_ports, mine.maintenance_seen, mine.reason, mine.blockers, mine.frozen)
