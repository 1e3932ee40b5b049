"""``decide``: the only place where hacontrol decides a failover.

``decide(observation, now, timing)`` returns a :class:`Plan`: an ordered tuple
of actions and a :class:`Reason`. Its consumer is ``hacontrol.agent.loop``,
which hands the plan to ``hacontrol.agent.execute`` (ordered, stop on first
failure) and observes the result on the next tick.

The rules, each a test in ``tests/unit``:

1. Epoch before everything: only the owner of the leader znode, under the
   current epoch, with a lease confirmed less than ``demote_deadline_s`` ago,
   takes any step that lets it accept I/O.
2. Fence before promote: FencePeer comes before any promoting step in a plan,
   and the executor stops at the first failure.
3. SUSPENDED means "I may not hold the lease": nothing new starts while the
   session is suspended, and the lease runs out on the local deadline. On the
   same deadline a controller that does not lead (a standby, or an active that
   just stepped down) gives its own portal addresses up when port takeover is
   on, before the peer can see its session expire and adopt them.
4. Never cause PDL: a standby sets Standby/Transitioning, it never unmaps.
5. Maintenance freezes automation, never the lease rule; the frozen steps are
   reported.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.core.actions import (
    Action,
    AddVips,
    AdoptPeerPorts,
    AnnounceVips,
    ArmWatchdog,
    BringUpOwnPorts,
    ClaimLeadership,
    ConfigureTarget,
    DisarmWatchdog,
    FenceDeadPeer,
    FenceMode,
    FencePeer,
    FinishSwitchover,
    KeyLost,
    KickWatchdog,
    LoadReservations,
    Publish,
    PublishReservations,
    RegisterStandby,
    ReleaseLeadership,
    ReleasePeerPorts,
    RemoveVips,
    SetAlua,
    TakeDownOwnPorts,
    TakeOverLeadership,
)
from hacontrol.core.model import AluaState, Observation, PeerReport, Role, SessionState
from hacontrol.core.peer import (
    Advert,
    advert,
    carried_over,
    failsafe_until,
    fast_takeover_due,
    peer_active_on_link,
    peer_standing_by,
    promised,
)
from hacontrol.core.plan import SAFETY_REASONS, Blocker, Plan, Reason
from hacontrol.core.publish import report, with_publish
from hacontrol.core.timing import Timing

AO = AluaState.ACTIVE_OPTIMIZED
STANDBY = AluaState.STANDBY
TRANSITIONING = AluaState.TRANSITIONING


def decide(obs: Observation, now: float, timing: Timing) -> Plan:
    """Return the next plan for this agent. Pure: same inputs, same plan."""
    plan = _decide(obs, now, timing)
    maintenance = obs.coord.maintenance.enabled
    if maintenance and plan.reason not in SAFETY_REASONS:
        kept = tuple(a for a in plan.actions if isinstance(a, KickWatchdog | Publish))
        frozen = tuple(a for a in plan.actions if a not in kept)
        if frozen:
            plan = replace(plan, reason=Reason.MAINTENANCE, actions=kept, frozen=frozen)
    plan = replace(plan, blockers=failover_blockers(obs, timing, now))
    return with_publish(plan, obs)


def link_advert(obs: Observation, plan: Plan, now: float, timing: Timing) -> Advert:
    """What the peer link says about us after this plan (the agent loop and the model set it every tick)."""
    claiming = any(isinstance(a, ClaimLeadership | FenceDeadPeer | TakeOverLeadership) for a in plan.actions)
    return advert(obs, role=plan.role, lease_valid_until=plan.lease_valid_until, claiming=claiming, now=now,
                  timing=timing)


def lease_valid_until(obs: Observation, timing: Timing) -> float | None:
    """End of our lease on the active role, or None if we do not hold it at all."""
    c = obs.coord
    if c.session is SessionState.LOST or c.lease_confirmed_at is None or c.leader is None:
        return None
    if _timeout_too_short(obs, timing):
        return None  # the servers would expire us before our deadline arithmetic assumes
    if not (c.leader.ours and c.leader.node == obs.node and c.leader.epoch == c.epoch):
        return None
    return c.lease_confirmed_at + timing.demote_deadline_s


def _decide(obs: Observation, now: float, timing: Timing) -> Plan:
    until = lease_valid_until(obs, timing)
    if until is None or now >= until:
        failsafe = failsafe_until(obs, timing)
        if failsafe is not None and now < failsafe:
            return _failsafe(obs, now, timing, failsafe)
        return _not_leading(obs, now, timing, until)
    if obs.coord.session is not SessionState.CONNECTED:
        # Suspended within the deadline: keep what we have, start nothing, no kicks.
        return Plan(Reason.SUSPENDED_HOLDING, _leader_role(obs), (), until)
    return _leading(obs, now, timing, until)


# --- not the (valid) leader ------------------------------------------------------------------


def _not_leading(obs: Observation, now: float, timing: Timing, until: float | None) -> Plan:
    if obs.datapath.serving:
        return _step_down_plan(obs, _step_down_reason(obs, until))
    actions: list[Action] = []
    if obs.watchdog_armed:
        actions.append(DisarmWatchdog())
    if not obs.datapath.configured:
        actions.append(ConfigureTarget())
    c = obs.coord
    if c.session is not SessionState.CONNECTED:
        if obs.spec.port_takeover and obs.datapath.own_ports_up and _session_lapsing(obs, now, timing):
            actions.append(TakeDownOwnPorts())
        return Plan(Reason.NO_SESSION, Role.STARTING if c.lease_confirmed_at is None else Role.STANDBY,
                    tuple(actions))
    actions.extend(_standby_alignment(obs, now, timing))
    aligning = bool(actions)
    if fast_takeover_due(obs, now, timing) and not _claim_blockers(obs, timing):
        # ZooKeeper still names the silent peer: power it off (confirmed), fence, then claim in one multi
        return Plan(Reason.FAST_TAKEOVER, Role.CANDIDATE,
                    (*actions, FenceDeadPeer(c.epoch + 1), TakeOverLeadership(c.epoch, obs.peer)))
    actions.extend(_standby_registration(obs, now, timing))
    if c.leader is not None:
        return Plan(Reason.ALIGNING if aligning else Reason.STANDBY, Role.STANDBY, tuple(actions))
    return _maybe_claim(obs, now, timing, tuple(actions))


def _failsafe(obs: Observation, now: float, timing: Timing, until: float) -> Plan:
    """ZooKeeper cannot confirm our lease, the peer's promise can: keep serving, start nothing new. The
    watchdog is kicked on a fresh promise as it is on a fresh lease. Once ZooKeeper answers again with our
    leader znode gone (the session expired meanwhile), lead again under a new epoch without stepping down."""
    c = obs.coord
    actions: list[Action] = []
    kick_until = _kick_until(obs, now, timing)
    if obs.watchdog_armed and kick_until is not None:
        actions.append(KickWatchdog(kick_until))
    if c.session is SessionState.CONNECTED and c.leader is None:
        actions.append(ClaimLeadership(c.epoch))
    return Plan(Reason.FAILSAFE, _leader_role(obs), tuple(actions), until)


def _kick_until(obs: Observation, now: float, timing: Timing) -> float | None:
    """A kick holds the watchdog off for ``watchdog_timeout_s``; it is allowed within ``kick_window_s`` of
    something that holds the peer off for at least ``session_timeout_s``: a lease ZooKeeper confirmed, or a
    promise the peer answered on the link (it will not claim or fence for ``session_timeout_s`` from its
    answer). Either one suffices: right after ZooKeeper comes back, or on a loaded controller, a round trip can
    take longer than the kick window while the peer's answers still come at once, and a healthy active must
    not be reset by its own watchdog for that. Returns the last instant a kick is allowed (the freshest
    confirmation + the window), or None when no confirmation allows one now."""
    confirmations = [t for t in (obs.coord.lease_confirmed_at, obs.link.promise_confirmed_at) if t is not None]
    if not confirmations:
        return None
    until = max(confirmations) + timing.kick_window_s
    return until if now <= until else None


def _session_lapsing(obs: Observation, now: float, timing: Timing) -> bool:
    """Our session has been unconfirmed for as long as an active would hold its lease: the servers may expire
    it any moment now, and the peer then adopts our portals (its duplicate-address check cannot see them if
    we are cut from it too). Without a confirmation at all (a process starting, or a session already lost)
    this is not the place: after the reconnect, ``_standby_alignment`` gives up what the peer adopted."""
    c = obs.coord
    return c.lease_confirmed_at is not None and now >= c.lease_confirmed_at + timing.demote_deadline_s


def _step_down_reason(obs: Observation, until: float | None) -> Reason:
    c = obs.coord
    if c.session is SessionState.LOST or c.lease_confirmed_at is None:
        return Reason.NO_SESSION
    if until is not None:
        return Reason.LEASE_EXPIRED
    return Reason.SUPERSEDED


def _step_down_actions(obs: Observation, own: AluaState) -> list[Action]:
    """Stop accepting I/O here: refuse at the target first, then cut and remove addresses."""
    d = obs.datapath
    actions: list[Action] = []
    if obs.spec.alua and d.own_group is not None and d.own_group != own:
        actions.append(SetAlua(own=own, peer=STANDBY))
    if d.vips:
        actions.append(RemoveVips(d.vips))
    if d.peer_ports_hosted:
        actions.append(ReleasePeerPorts())
    return actions


def _step_down_plan(obs: Observation, reason: Reason) -> Plan:
    actions = _step_down_actions(obs, STANDBY)
    if reason is Reason.KEY_LOST:
        actions.append(KeyLost(obs.spec.on_key_lost))
    if obs.watchdog_armed:
        actions.append(DisarmWatchdog())  # only reached if every step above succeeded
    return Plan(reason, Role.DEMOTING, tuple(actions))


def _mirror(peer: PeerReport | None, leader_is_peer: bool) -> AluaState:
    if peer is None or not leader_is_peer or peer.own_alua is None:
        return STANDBY
    return peer.own_alua if peer.own_alua in (AO, TRANSITIONING) else STANDBY


def _standby_alignment(obs: Observation, now: float, timing: Timing) -> list[Action]:
    """A standby keeps every LUN mapped and reports Standby; it mirrors the active's group state."""
    d, c = obs.datapath, obs.coord
    actions: list[Action] = []
    if obs.spec.alua and d.own_group is not None:
        leader_is_peer = c.leader is not None and c.leader.node == obs.peer
        want_peer = _mirror(c.peer, leader_is_peer)
        if c.peer is None and peer_active_on_link(obs, now, timing):
            want_peer = AO  # the peer serves without ZooKeeper (failsafe): keep REPORT TARGET PORT GROUPS true
        if d.own_group != STANDBY or d.peer_group != want_peer:
            actions.append(SetAlua(own=STANDBY, peer=want_peer))
    if _own_ports_missing(obs):
        actions.append(BringUpOwnPorts())
    elif obs.spec.port_takeover and d.own_ports_up and _peer_hosts_ours(obs):
        # The peer adopted our portals while our session was gone: the same addresses are up on both. Ours go;
        # the peer hands them back once we are a ready standby, and we bring them up again (with announcements).
        actions.append(TakeDownOwnPorts())
    return actions


def _peer_hosts_ours(obs: Observation) -> bool:
    return obs.coord.peer is not None and obs.coord.peer.hosts_peer_ports


def _own_ports_missing(obs: Observation) -> bool:
    """Our managed portal addresses are not up here, and the peer does not host them for us."""
    managed = obs.spec.port_takeover or obs.spec.own_portals
    return managed and not obs.datapath.own_ports_up and not _peer_hosts_ours(obs)


def _standby_registration(obs: Observation, now: float, timing: Timing) -> list[Action]:
    """Register our key as standby under the current epoch once our ports have settled in Standby."""
    s, d, c = obs.storage, obs.datapath, obs.coord
    if not (s.pr and s.visible and obs.spec.standby_registers):
        return []
    if c.leader is None or c.leader.node != obs.peer or s.my_key_epoch == c.epoch:
        return []
    if d.own_group is not None and d.own_group != STANDBY:
        return []
    if d.alua_changed_at is not None and now - d.alua_changed_at < timing.standby_settle_s:
        return []
    return [RegisterStandby(c.epoch)]


def _maybe_claim(obs: Observation, now: float, timing: Timing, actions: tuple[Action, ...]) -> Plan:
    c = obs.coord
    if promised(obs, now):
        # The active serves on our promise while ZooKeeper cannot reach it; claiming now could make two actives
        return Plan(Reason.PROMISED, Role.STANDBY, actions)
    if not c.peer_seen and c.connected_since is not None and now - c.connected_since < timing.startup_grace_s:
        # Just started and never saw the peer: give it time to show up, so that two controllers booting
        # together hand over the planned way instead of the first one powering the other off.
        return Plan(Reason.STARTUP_WAIT, Role.STANDBY, actions)
    intent = c.switchover
    if (intent is not None and intent.state == "pending" and intent.target == obs.peer
            and now < intent.deadline and c.peer is not None):
        return Plan(Reason.WAITING_FOR_SWITCHOVER, Role.STANDBY, actions)
    blockers = _claim_blockers(obs, timing)
    if _peer_handed_over(obs, now, timing):
        blockers = [b for b in blockers if b is not Blocker.FENCING_NOT_CONFIGURED]
    if blockers:
        return Plan(Reason.NOT_READY, Role.STANDBY, actions)
    return Plan(Reason.CLAIMING, Role.CANDIDATE, (*actions, ClaimLeadership(c.epoch)))


def _claim_blockers(obs: Observation, timing: Timing) -> list[Blocker]:
    """What keeps us from claiming now. Maintenance is applied by decide() itself (so the frozen claim is
    reported), a pending switchover is handled by the caller, and a promise is checked on its own."""
    ignored = (Blocker.SWITCHOVER_PENDING, Blocker.MAINTENANCE, Blocker.PROMISED)
    return [b for b in failover_blockers(obs, timing) if b not in ignored]


def _timeout_too_short(obs: Observation, timing: Timing) -> bool:
    granted = obs.coord.granted_timeout_s
    return granted is not None and granted < timing.session_timeout_s * 0.99


def failover_blockers(obs: Observation, timing: Timing | None = None, now: float | None = None
                      ) -> tuple[Blocker, ...]:
    """Why this agent could not take over automatically now (empty: it could)."""
    c, s, d = obs.coord, obs.storage, obs.datapath
    found: list[Blocker] = []
    if c.session is not SessionState.CONNECTED:
        found.append(Blocker.NO_QUORUM)
    if timing is not None and _timeout_too_short(obs, timing):
        found.append(Blocker.SESSION_TIMEOUT_MISMATCH)
    if c.maintenance.enabled:
        found.append(Blocker.MAINTENANCE)
    if not s.visible:
        found.append(Blocker.STORAGE_NOT_VISIBLE)
    if not d.configured:
        found.append(Blocker.NOT_CONFIGURED)
    if not obs.spec.fencing_configured:
        found.append(Blocker.FENCING_NOT_CONFIGURED)
    intent = c.switchover
    if intent is not None and intent.state == "pending" and intent.target == obs.peer:
        found.append(Blocker.SWITCHOVER_PENDING)
    if now is not None and promised(obs, now):
        found.append(Blocker.PROMISED)
    return tuple(found)


# --- the leader ------------------------------------------------------------------------------


def _leader_role(obs: Observation) -> Role:
    d = obs.datapath
    promoted = (not obs.spec.alua or d.own_group is AO) and obs.spec.vips <= d.vips
    return Role.ACTIVE if promoted else Role.PROMOTING


def _leading(obs: Observation, now: float, timing: Timing, until: float) -> Plan:
    c, s = obs.coord, obs.storage
    epoch = c.epoch
    head: list[Action] = []
    # the watchdog first: a kick that waits behind a slow step lands later than its confirmation allows
    if not obs.watchdog_armed:
        head.append(ArmWatchdog())
    elif (kick_until := _kick_until(obs, now, timing)) is not None:
        head.append(KickWatchdog(kick_until))
    if not obs.datapath.configured:
        head.append(ConfigureTarget())
    if obs.datapath.serving and not _fenced(obs, epoch):
        # Serving is only allowed after fencing under this very epoch. If we did fence and the
        # disks no longer show our reservation, someone took our key: step down and give the role up.
        # If they still do and only a stale or foreign key appeared, fencing again (below) removes it.
        record = s.last_fence
        fenced_before = record is not None and record.epoch == epoch and record.ok
        still_ours = s.pr and s.my_key_epoch == epoch and s.holder == (obs.node, epoch)
        if fenced_before and not still_ours:
            plan = _step_down_plan(obs, Reason.KEY_LOST)
            return replace(plan, actions=(*plan.actions, ReleaseLeadership(epoch)), lease_valid_until=until)
        if not fenced_before and not carried_over(obs, epoch):
            return replace(_step_down_plan(obs, Reason.UNFENCED_SERVING), lease_valid_until=until)
    if _storage_lost(obs, now, timing):
        # I/O through us would fail at the disks: hand over to the standby that still sees them.
        return _hand_over(obs, until, "storage-lost", Reason.STORAGE_LOST)
    intent = c.switchover
    if intent is not None and intent.state == "pending":
        handled = _handle_switchover(obs, now, head, until)
        if handled is not None:
            return handled
    return _takeover(obs, now, timing, head, until)


def _peer_handed_over(obs: Observation, now: float, timing: Timing) -> bool:
    """The peer is alive and says it serves nothing: a planned hand-over, no power fencing. Without a member
    report (its session expired, e.g. in a ZooKeeper outage both lived through) the peer link can say so."""
    p = obs.coord.peer
    if p is None:
        return peer_standing_by(obs, now, timing)
    return not p.vips and not p.hosts_peer_ports and (p.own_alua is None or not p.own_alua.accepts_io)


def _fenced(obs: Observation, epoch: int) -> bool:
    s = obs.storage
    record = s.last_fence
    if record is None or record.epoch != epoch or not record.ok:
        return False
    if s.pr:
        return s.my_key_epoch == epoch and s.holder == (obs.node, epoch) and not s.stale_peer_key
    return True


def _takeover(obs: Observation, now: float, timing: Timing, head: list[Action], until: float) -> Plan:
    """Fence, then ALUA, then addresses, in that order, in one plan (the executor stops on failure)."""
    c, d, s = obs.coord, obs.datapath, obs.storage
    epoch = c.epoch
    actions = list(head)
    reason = Reason.ACTIVE
    fenced = _fenced(obs, epoch)
    if fenced and d.pr_loaded_epoch == epoch and d.pr_unpublished:
        # first: a later step that fails (an address in use) must not hold the initiators' reservations back
        actions.append(PublishReservations(epoch))
    if not fenced:
        last = s.last_fence
        if last is not None and last.epoch == epoch and not last.ok and now - last.at < timing.fence_retry_s:
            return Plan(Reason.FENCE_BACKOFF, Role.PROMOTING, tuple(actions), until)
        mode = FenceMode.PLANNED if _peer_handed_over(obs, now, timing) else FenceMode.UNPLANNED
        actions.append(FencePeer(epoch, mode))
        reason = Reason.FENCING
    if d.pr_loaded_epoch is not None and d.pr_loaded_epoch != epoch:
        # after the fence (the old active can change nothing more) and before any port of ours serves I/O
        actions.append(LoadReservations(epoch, keep_local=d.serving))
        reason = Reason.FENCING if reason is Reason.FENCING else Reason.PROMOTING
    want_peer = AO if d.peer_ports_hosted else STANDBY
    if obs.spec.alua and d.own_group is not None and (d.own_group is not AO or d.peer_group != want_peer):
        actions.append(SetAlua(own=AO, peer=want_peer))
        reason = Reason.FENCING if reason is Reason.FENCING else Reason.PROMOTING
    missing = obs.spec.vips - d.vips
    if missing:
        # After a hand-over the peer itself reported the addresses gone: skip the duplicate-address wait,
        # every millisecond between its removal and our announcement can cost an initiator a SYN timeout.
        actions.append(AddVips(frozenset(missing), check_duplicates=not _peer_handed_over(obs, now, timing)))
        reason = Reason.FENCING if reason is Reason.FENCING else Reason.PROMOTING
    actions.extend(_port_moves(obs, epoch, now, timing))
    if _own_ports_missing(obs):
        # e.g. leading again after a quorum loss, during which we gave our portals up. After the peer's port
        # moves: a failing duplicate-address check here must not hold up adopting a dead peer's portals.
        actions.append(BringUpOwnPorts())
    intent = c.switchover
    if (reason is Reason.ACTIVE and intent is not None and intent.state == "pending"
            and intent.target == obs.node):
        actions.append(FinishSwitchover(intent.intent_id, "done"))
    every = obs.spec.announce_every_s
    if reason is Reason.ACTIVE and every > 0 and d.vips and (d.announced_at is None or now - d.announced_at >= every):
        actions.append(AnnounceVips(d.vips))
    role = Role.ACTIVE if reason is Reason.ACTIVE else Role.PROMOTING
    return Plan(reason, role, tuple(actions), until)


def _port_moves(obs: Observation, epoch: int, now: float, timing: Timing) -> list[Action]:
    """Port takeover: adopt a dead peer's portals once it is fenced; hand them back when it is ready."""
    if not obs.spec.port_takeover:
        return []
    p, d = obs.coord.peer, obs.datapath
    if not d.peer_ports_hosted and _peer_gone(obs, epoch, now, timing):
        return [AdoptPeerPorts(epoch)]
    if p is not None and d.peer_ports_hosted and p.ready and p.role is Role.STANDBY:
        return [ReleasePeerPorts()]
    return []


def _peer_gone(obs: Observation, epoch: int, now: float, timing: Timing) -> bool:
    """The peer's portals are ours to adopt: its session ended (and the link does not hear it standing by), or
    we powered it off for this very epoch and its member report is the one it wrote before (a fast takeover:
    that znode lingers until the dead controller's session expires). A report written under our epoch is the
    peer back with a new session: it is not gone, whatever we did to it earlier in this epoch."""
    p = obs.coord.peer
    if p is None:
        return not peer_standing_by(obs, now, timing)
    record = obs.storage.last_fence
    powered_off = record is not None and record.ok and record.epoch == epoch and record.power_confirmed
    return powered_off and p.epoch_seen < epoch


def _handle_switchover(obs: Observation, now: float, head: list[Action], until: float) -> Plan | None:
    c = obs.coord
    intent = c.switchover
    assert intent is not None
    if intent.target == obs.node:
        return None  # we are the target and already lead: _takeover finishes it
    if intent.target != obs.peer:
        return Plan(Reason.SWITCHOVER_REFUSED, _leader_role(obs),
                    (*head, FinishSwitchover(intent.intent_id, "refused", f"unknown node {intent.target!r}")),
                    until)
    refusal = _switchover_refusal(obs, now)
    if refusal:
        return Plan(Reason.SWITCHOVER_REFUSED, _leader_role(obs),
                    (*head, FinishSwitchover(intent.intent_id, "refused", refusal)), until)
    return _hand_over(obs, until, intent.intent_id, Reason.HANDING_OFF)


def _hand_over(obs: Observation, until: float, handed_off: str, reason: Reason) -> Plan:
    """The ordered hand-over: Transitioning, cut and remove addresses, Standby, say so, release, disarm."""
    actions: list[Action] = []
    actions.extend(_step_down_actions(obs, TRANSITIONING))
    if obs.spec.alua and obs.datapath.own_group is not None:
        actions.append(SetAlua(own=STANDBY, peer=STANDBY))
    actions.extend(_last_reservations(obs, obs.coord.epoch))
    actions.append(report(obs, Role.STANDBY, STANDBY if obs.spec.alua else None, frozenset(),
                           handed_off=handed_off))
    actions.append(ReleaseLeadership(obs.coord.epoch))
    if obs.watchdog_armed:
        actions.append(DisarmWatchdog())
    return Plan(reason, Role.DEMOTING, tuple(actions), until)


def _last_reservations(obs: Observation, epoch: int) -> list[Action]:
    """A hand-over publishes the initiators' reservations once more after this controller's ports are down
    (no PR-OUT can reach it any more), whatever the observation said: the last change may be newer than it."""
    return [PublishReservations(epoch)] if obs.datapath.pr_loaded_epoch == epoch else []


def _storage_lost(obs: Observation, now: float, timing: Timing) -> bool:
    """Our paths to the shared disks are down (for longer than a glitch) while a ready standby has them."""
    s, c = obs.storage, obs.coord
    if s.visible or s.invisible_since is None or now - s.invisible_since < timing.storage_grace_s:
        return False
    p = c.peer
    return p is not None and p.ready and p.role is Role.STANDBY and not c.maintenance.enabled


def shutdown_plan(obs: Observation) -> Plan:
    """An agent being stopped (systemctl stop): step down and hand leadership over without waiting for expiry.

    Its member znode stays (the session stays open until the peer took over),
    so the peer sees a cooperating controller and fences it the planned way.
    """
    c = obs.coord
    actions: list[Action] = list(_step_down_actions(obs, TRANSITIONING if obs.datapath.serving else STANDBY))
    if obs.spec.alua and obs.datapath.own_group not in (None, STANDBY):
        actions.append(SetAlua(own=STANDBY, peer=STANDBY))
    leading = c.leader is not None and c.leader.ours and c.leader.node == obs.node
    if c.session is SessionState.CONNECTED:
        if leading:
            actions.extend(_last_reservations(obs, c.leader.epoch))
        actions.append(report(obs, Role.STANDBY, STANDBY if obs.spec.alua else None, frozenset(),
                               handed_off="shutdown"))
        if leading:
            actions.append(ReleaseLeadership(c.leader.epoch))
    if obs.watchdog_armed:
        actions.append(DisarmWatchdog())
    return Plan(Reason.SHUTDOWN, Role.DEMOTING if actions else Role.STANDBY, tuple(actions))


def shutdown_again(before: Observation, after: Observation) -> bool:
    """Run the shutdown plan once more: the session was suspended when the stop began and is connected now,
    so the report and the release that could not go out then can go out now."""
    return before.coord.session is SessionState.SUSPENDED and after.coord.session is SessionState.CONNECTED


def awaits_hand_over(before: Observation, after: Observation) -> bool:
    """Wait for the peer to lead before closing the session: we led when the stop began, and ZooKeeper still
    hears us, so the release went out in order. Otherwise the peer learns of the stop from the session's end
    (or from the peer link's "stepped down")."""
    led = before.coord.leader is not None and before.coord.leader.ours
    return led and after.coord.session is SessionState.CONNECTED


def _switchover_refusal(obs: Observation, now: float) -> str:
    c = obs.coord
    intent = c.switchover
    assert intent is not None
    if now >= intent.deadline:
        return "deadline passed before the hand-over could start"
    if c.maintenance.enabled:
        return "maintenance mode is on"
    p = c.peer
    if p is None:
        return f"{obs.peer} has no live ZooKeeper session"
    if not p.ready:
        return f"{obs.peer} is not ready (shared disks or target configuration missing there)"
    if p.role is not Role.STANDBY:
        return f"{obs.peer} is {p.role.value}, not standby"
    return ""
