"""Safety invariants over a simulated cluster, checked after every tick.

Each check raises :class:`Violation` with a sentence an operator would
understand. ``SAFETY`` lists them all; ``liveness_bound_s`` says how soon,
once faults stop, exactly one controller must be active.
"""

from __future__ import annotations

from hacontrol.core.model import AluaState
from hacontrol.core.timing import Timing
from hacontrol.simulation.cluster import Cluster
from hacontrol.simulation.world import key_parts

PDL_SAFE_STATES = frozenset({AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY, AluaState.TRANSITIONING})


class Violation(AssertionError):
    pass


def one_writer(cl: Cluster) -> None:
    """Never two controllers that accept I/O and whose writes the shared disks would take."""
    active = cl.active_nodes()
    if len(active) > 1:
        raise Violation(f"t={cl.now:.2f}: two writers: {active} both serve and storage accepts both")


def writer_holds_reservation(cl: Cluster) -> None:
    """A controller whose writes are accepted while it serves holds the reservation under its promotion epoch."""
    if not cl.profile.pr:
        return
    for c in cl.nodes.values():
        if not (cl.serving(c) and cl.writes_accepted(c)):
            continue
        for i, d in enumerate(cl.disks):
            key = d.registrations.get(c.name)
            if d.holder != c.name or key is None or key_parts(key)[1] != c.promoted_epoch:
                raise Violation(f"t={cl.now:.2f}: {c.name} serves with writes accepted but disk {i} is held by "
                                f"{d.holder} (key {key}, promoted under epoch {c.promoted_epoch})")


def no_refused_service(cl: Cluster) -> None:
    """A controller that presents itself as serving has its writes accepted (else initiators see errors).

    The one excuse is an agent that cannot act (crashed, frozen, or not yet
    through its first tick after a restart or a thaw) on a controller without
    a hardware watchdog: nothing on the node itself can stop its kernel
    target then, and the peer's power fencing either switched it off (so it
    serves nothing) or failed. docs/operations.md says why a watchdog or power
    fencing is required. A lost disk path is a fault of its own, not a decision.
    """
    for c in cl.nodes.values():
        if not cl.serving(c) or cl.writes_accepted(c) or not c.disk_reachable:
            continue
        helpless = not c.agent_running or not c.started or c.frozen_until is not None
        if helpless and not cl.profile.hardware_watchdog:
            continue
        raise Violation(f"t={cl.now:.2f}: {c.name} still serves but the shared disks refuse its writes "
                        "(it was fenced before it stepped down)")


def one_vip_holder(cl: Cluster) -> None:
    """No address is held by both controllers at once (the client network would see two MACs)."""
    a, b = cl.nodes["a"], cl.nodes["b"]
    if a.powered and b.powered and a.vips & b.vips:
        raise Violation(f"t={cl.now:.2f}: {sorted(a.vips & b.vips)} held by both controllers")


def one_portal_owner(cl: Cluster) -> None:
    """A controller's portal addresses are up in one place only (home, or adopted by the survivor)."""
    for c in cl.nodes.values():
        peer = cl.peer_of(c.name)
        if c.powered and peer.powered and c.own_ports_up and peer.peer_ports_hosted:
            raise Violation(f"t={cl.now:.2f}: {c.name}'s portals are up on both controllers")


def never_pdl(cl: Cluster) -> None:
    """A controller only ever reports AO, Standby or Transitioning for its own group (never unmapped/offline)."""
    for c in cl.nodes.values():
        if c.powered and c.own_group not in PDL_SAFE_STATES:
            raise Violation(f"t={cl.now:.2f}: {c.name} reports {c.own_group.label} for its own group")


def epochs_increase(cl: Cluster) -> None:
    epochs = [e for _, _, e in cl.zk.history]
    if epochs != sorted(set(epochs)):
        raise Violation(f"t={cl.now:.2f}: epochs not strictly increasing: {epochs}")


SAFETY = (one_writer, writer_holds_reservation, no_refused_service, one_vip_holder, one_portal_owner, never_pdl,
          epochs_increase)


def liveness_bound_s(timing: Timing) -> float:
    """How long after the last fault exactly one controller must be active.

    A dead or frozen agent's session lingers up to one session timeout; the
    survivor notices on its next tick, claims, and fences (a just-restarted
    agent that never saw its peer waits ``startup_grace_s`` first); a fence attempt
    that failed during the fault is retried after ``fence_retry_s``; a
    thawed ex-leader gives up its addresses on its first tick. Ten loop
    intervals cover the ticks between those steps.
    """
    return (timing.session_timeout_s + timing.demote_deadline_s + timing.fence_retry_s
            + timing.standby_settle_s + timing.startup_grace_s + 10 * timing.loop_interval_s)


def liveness_bound_with_link_s(timing: Timing) -> float:
    """With the peer link's failsafe, a standby may still be bound by a promise (one session timeout) when the
    faults stop."""
    return liveness_bound_s(timing) + timing.session_timeout_s


def fully_active(cl: Cluster) -> list[str]:
    """Controllers that lead, serve every address, and (with ALUA) present their group AO."""
    out = []
    leader = cl.zk.leader
    for c in cl.nodes.values():
        if not (c.powered and leader is not None and leader[0] == c.name):
            continue
        if cl.profile.alua and c.own_group is not AluaState.ACTIVE_OPTIMIZED:
            continue
        if "vip0" in c.vips and cl.writes_accepted(c):
            out.append(c.name)
    return out
