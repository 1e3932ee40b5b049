"""Two simulated controllers running the real ``decide`` against the simulated world.

Each controller has kernel-side state that survives an agent crash (ALUA
states, addresses, the watchdog timer) and agent memory that does not (its
ZooKeeper session, its cached view, its last fence result). Faults are
methods; ``advance`` moves time in loop-interval steps and ticks every agent
that is running and not frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hacontrol.adapters.peerlink.protocol import LinkState
from hacontrol.core import actions as A
from hacontrol.core.decide import Plan, decide, link_advert
from hacontrol.core.model import (
    AluaState,
    Coordination,
    DataPath,
    FenceRecord,
    Leader,
    Maintenance,
    Observation,
    PeerLinkView,
    PeerReport,
    SessionState,
    Spec,
    Storage,
    SwitchoverIntent,
)
from hacontrol.core.timing import Timing
from hacontrol.simulation.link import KEY, PATHS, LinkNet
from hacontrol.simulation.world import Coordinator, Disk, Intent, ReservationConflict, key_parts, pr_key

STANDBY = AluaState.STANDBY
VIP = "vip0"


@dataclass(frozen=True)
class Profile:
    """What the simulated pair is built with."""

    pr: bool = True  # shared disks with persistent reservations (LIO + JBOD)
    alua: bool = True  # False: VIP-only failover (tgt)
    power_fencing: bool = False
    hardware_watchdog: bool = True
    port_takeover: bool = False
    disks: int = 2
    boot_s: float = 5.0
    peer_link: bool = False  # heartbeats between the agents (hacontrol.adapters.peerlink)
    fast_takeover: bool = False  # needs peer_link and power_fencing
    failsafe: bool = False  # needs peer_link


@dataclass
class Controller:
    name: str
    node_id: int
    # kernel / hardware: survives an agent crash, not a power cycle
    powered: bool = True
    own_group: AluaState = STANDBY
    peer_group: AluaState = STANDBY
    alua_changed_at: float | None = None
    vips: set[str] = field(default_factory=set)
    own_ports_up: bool = True
    peer_ports_hosted: bool = False
    promoted_epoch: int | None = None
    watchdog_armed: bool = False  # the agent opened the watchdog (systemd's or the hardware one)
    watchdog_deadline: float | None = None  # when a hardware watchdog would reset this controller
    boot_at: float | None = None
    # environment faults
    agent_running: bool = True
    frozen_until: float | None = None
    zk_reachable: bool = True
    disk_reachable: bool = True
    fence_device_ok: bool = True
    disk_lost_at: float | None = None
    # agent memory
    started: bool = False  # the (re)started or thawed agent has completed its first tick
    session_id: int | None = None
    session_state: SessionState = SessionState.LOST
    lease_confirmed_at: float | None = None
    view: Coordination | None = None
    last_fence: FenceRecord | None = None
    last_plan: Plan | None = None
    last_results: list[tuple[str, bool]] = field(default_factory=list)
    connected_since: float | None = None
    peer_seen: bool = False
    link: LinkState | None = None
    link_sent_at: float = float("-inf")
    peer_alive: tuple[tuple[int, int] | None, float | None] = (None, None)  # (znode version, first seen at)

    def forget(self) -> None:
        """The agent process ends: everything it remembered is gone."""
        self.started = False
        self.session_id = None
        self.session_state = SessionState.LOST
        self.lease_confirmed_at = None
        self.view = None
        self.last_fence = None
        self.last_plan = None
        self.last_results = []
        self.connected_since = None
        self.peer_seen = False
        self.link = None
        self.link_sent_at = float("-inf")
        self.peer_alive = (None, None)

    def power_off(self) -> None:
        self.powered = False
        self.agent_running = False
        self.own_group = STANDBY
        self.peer_group = STANDBY
        self.vips.clear()
        self.own_ports_up = False
        self.peer_ports_hosted = False
        self.promoted_epoch = None
        self.watchdog_deadline = None
        self.watchdog_armed = False
        self.frozen_until = None
        self.forget()


class Cluster:
    def __init__(self, timing: Timing, profile: Profile = Profile()):
        self.timing = timing
        self.profile = profile
        self.now = 0.0
        self.zk = Coordinator(timing.session_timeout_s)
        self.disks = [Disk() for _ in range(profile.disks if profile.pr else 0)]
        self.nodes = {"a": Controller("a", 1), "b": Controller("b", 2)}
        self.log: list[tuple[float, str, str]] = []
        self.checks: list = []  # callables run after every tick and environment step (invariants)
        self._intent_seq = 0
        self.net = LinkNet()
        self._incarnation = 0

    # --- helpers --------------------------------------------------------------------------

    def peer_of(self, name: str) -> Controller:
        return self.nodes["b" if name == "a" else "a"]

    def spec(self, c: Controller) -> Spec:
        p = self.profile
        return Spec(node=c.name, peer=self.peer_of(c.name).name, vips=frozenset({VIP}), alua=p.alua,
                    fencing_configured=p.pr or p.power_fencing, power_fencing=p.power_fencing,
                    port_takeover=p.port_takeover, fast_takeover=p.peer_link and p.fast_takeover,
                    failsafe=p.peer_link and p.failsafe)

    # --- time -----------------------------------------------------------------------------

    def advance(self, seconds: float, order: tuple[str, ...] = ("a", "b"), split: int | None = None) -> None:
        """Move time forward in loop-interval steps, ticking every live agent each step.

        With ``split``, the first agent in ``order`` is interrupted after that
        many actions of its plan; the other agent ticks, then the first one
        finishes its plan. Real plans take milliseconds per step, so the
        peer can act in between: this is how the model sees such races.
        """
        step = self.timing.loop_interval_s
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            self._environment()
            self._link_deliver()
            self._check()
            pending: tuple[Controller, Plan, int] | None = None
            for i, name in enumerate(order):
                c = self.nodes[name]
                if not self._runs(c):
                    continue
                if c.frozen_until is not None:
                    c.frozen_until = None
                    c.started = False  # thawed: it acts again only once this tick's plan has run
                if i == 0 and split is not None:
                    plan = self.tick(c, stop_after=split)
                    self._check()
                    if len(plan.actions) > split:
                        pending = (c, plan, split)
                else:
                    self._burst(c)
            if pending is not None and self._runs(pending[0]):
                c, plan, done = pending
                self.execute(c, plan, start=done)
                c.started = True
                self._check()
            self._link_send()

    def _burst(self, c: Controller, limit: int = 6) -> None:
        """Tick, and tick again at once while the last plan made progress (as the real loop does)."""
        for _ in range(limit):
            self.tick(c)
            self._check()
            progressed = [ok for (name, ok) in c.last_results if name not in ("Publish", "KickWatchdog")]
            if not progressed or not all(progressed):
                return

    def _link_deliver(self) -> None:
        def can_read(name: str) -> bool | None:
            c = self.nodes[name]
            if not (c.powered and c.agent_running and c.link is not None):
                return None
            return c.frozen_until is None or self.now >= c.frozen_until

        def receive(name: str, path: int, data: bytes) -> None:
            c = self.nodes[name]
            assert c.link is not None
            reply = c.link.receive(data, path, self.now)
            if reply is not None:
                self.net.send(self.peer_of(name).name, path, reply, self.now)

        for c in self.nodes.values():  # each link's loop runs (a thawed agent was not listening meanwhile)
            if c.link is not None and self._runs(c):
                c.link.awake(self.now, max_gap_s=3 * self.timing.heartbeat_interval_s)
        self.net.deliver(self.now, can_read, receive)

    def _link_send(self) -> None:
        """Each running agent's link thread: a heartbeat on every path once per heartbeat interval."""
        for c in self.nodes.values():
            if c.link is None or not self._runs(c):
                continue
            if self.now - c.link_sent_at < self.timing.heartbeat_interval_s - 1e-9:
                continue
            c.link_sent_at = self.now
            for path in range(PATHS):
                self.net.send(self.peer_of(c.name).name, path, c.link.heartbeat(path, self.now), self.now)

    def _runs(self, c: Controller) -> bool:
        return c.powered and c.agent_running and (c.frozen_until is None or self.now >= c.frozen_until)

    def _check(self) -> None:
        for check in self.checks:
            check(self)

    def _environment(self) -> None:
        self.zk.expire(self.now)
        for c in self.nodes.values():
            if c.disk_reachable:
                c.disk_lost_at = None
            elif c.disk_lost_at is None:
                c.disk_lost_at = self.now
            if c.powered and c.watchdog_deadline is not None and self.now >= c.watchdog_deadline:
                self.log.append((self.now, c.name, "watchdog reset"))
                c.power_off()
                c.boot_at = self.now + self.profile.boot_s
            if not c.powered and c.boot_at is not None and self.now >= c.boot_at:
                c.powered, c.agent_running, c.boot_at = True, True, None

    # --- one agent tick ---------------------------------------------------------------------

    def tick(self, c: Controller, stop_after: int | None = None) -> Plan:
        if self.profile.peer_link and c.link is None:
            self._incarnation += 1  # a new agent process: a new incarnation, sequence numbers from 1
            c.link = LinkState(c.node_id, self.peer_of(c.name).node_id, PATHS, KEY, self._incarnation,
                               promise_s=self.timing.session_timeout_s, min_promise_s=self.timing.session_timeout_s)
        obs = self.observe(c)
        plan = decide(obs, self.now, self.timing)
        c.last_plan = plan
        if c.link is not None:
            c.link.advertise(link_advert(obs, plan, self.now, self.timing))
        self.execute(c, plan, stop=stop_after)
        if stop_after is None or len(plan.actions) <= stop_after:
            c.started = True
        return plan

    def observe(self, c: Controller) -> Observation:
        self._observe_coordination(c)
        assert c.view is not None
        return Observation(spec=self.spec(c), coord=c.view, storage=self._storage(c), datapath=self._datapath(c),
                           watchdog_armed=c.watchdog_armed,
                           link=c.link.view() if c.link is not None else PeerLinkView())

    def _observe_coordination(self, c: Controller) -> None:
        zk = self.zk
        if not c.zk_reachable:
            if c.session_state is SessionState.CONNECTED:
                c.session_state = SessionState.SUSPENDED
            if c.view is None:
                c.view = Coordination(SessionState.LOST, None, None, 0, None)
            else:
                c.view = Coordination(c.session_state, c.lease_confirmed_at, c.view.leader, c.view.epoch,
                                      c.view.peer, c.view.switchover, c.view.maintenance, c.view.published)
            return
        if c.session_id is not None and not zk.alive(c.session_id):
            c.session_id, c.session_state, c.lease_confirmed_at = None, SessionState.LOST, None
            c.view = Coordination(SessionState.LOST, None, None, zk.epoch, None)
            return
        if c.session_id is None:
            c.session_id = zk.open_session(self.now)
        zk.touch(c.session_id, self.now)
        if c.view is not None and c.view.leader is not None and c.view.leader.ours:
            zk.touch_alive(c.name, c.session_id)
        seen = zk.alive_znodes.get(self.peer_of(c.name).name)
        if seen is None:
            c.peer_alive = (None, None)
        elif seen != c.peer_alive[0]:
            c.peer_alive = (seen, self.now)
        c.session_state = SessionState.CONNECTED
        c.lease_confirmed_at = self.now
        leader = None
        if zk.leader is not None:
            node, epoch, owner = zk.leader
            leader = Leader(node, epoch, owner == c.session_id)
        peer = zk.members.get(self.peer_of(c.name).name)
        mine = zk.members.get(c.name)
        intent = None
        if zk.switchover is not None:
            i = zk.switchover
            intent = SwitchoverIntent(i.intent_id, i.target, i.deadline, i.state)
        if c.connected_since is None:
            c.connected_since = self.now
        c.peer_seen = c.peer_seen or peer is not None
        c.view = Coordination(SessionState.CONNECTED, self.now, leader, zk.epoch, peer[1] if peer else None,
                              intent, Maintenance(zk.maintenance),
                              mine[1] if mine and mine[0] == c.session_id else None,
                              connected_since=c.connected_since, peer_seen=c.peer_seen,
                              peer_alive_at=c.peer_alive[1])

    def _storage(self, c: Controller) -> Storage:
        if not self.profile.pr:
            return Storage(pr=False, visible=c.disk_reachable, last_fence=c.last_fence)
        if not c.disk_reachable:
            return Storage(pr=True, visible=False, last_fence=c.last_fence, invisible_since=c.disk_lost_at)
        mine = {d.registrations.get(c.name) for d in self.disks}
        my_epoch = key_parts(mine.pop())[1] if len(mine) == 1 and None not in mine else None
        holders = {(d.holder, d.holder_key()) for d in self.disks}
        holder = None
        if len(holders) == 1:
            who, key = holders.pop()
            if who is not None and key is not None:
                holder = (who, key_parts(key)[1])
        epoch = c.view.epoch if c.view else 0
        peer = self.peer_of(c.name).name
        stale = any(w == peer and key_parts(k)[1] < epoch for d in self.disks for w, k in d.registrations.items())
        return Storage(pr=True, visible=True, my_key_epoch=my_epoch, holder=holder, stale_peer_key=stale,
                       last_fence=c.last_fence)

    def _datapath(self, c: Controller) -> DataPath:
        alua = self.profile.alua
        return DataPath(configured=True, own_group=c.own_group if alua else None,
                        peer_group=c.peer_group if alua else None, alua_changed_at=c.alua_changed_at,
                        vips=frozenset(c.vips), own_ports_up=c.own_ports_up, peer_ports_hosted=c.peer_ports_hosted)

    # --- executing a plan --------------------------------------------------------------------

    def execute(self, c: Controller, plan: Plan, start: int = 0, stop: int | None = None) -> list[tuple[str, bool]]:
        """Run the plan's actions in order from ``start``; stop at the first failure other than a kick (or at
        ``stop``)."""
        results: list[tuple[str, bool]] = []
        if start and c.last_plan is not plan:
            return results  # the agent restarted or re-planned meanwhile
        if start and c.last_results and not all(ok for name, ok in c.last_results if name != "KickWatchdog"):
            return results
        for action in plan.actions[start:stop]:
            if action.needs_lease and (plan.lease_valid_until is None or self.now >= plan.lease_valid_until):
                ok = False
            else:
                ok = self._apply(c, action)
            results.append((action.name, ok))
            self.log.append((self.now, c.name, f"{action.name}{'' if ok else ' FAILED'}"))
            if not ok and action.name != "KickWatchdog":  # as the executor: a late kick ends nothing else
                break
        c.last_results = results
        return results

    def _apply(self, c: Controller, a: A.Action) -> bool:
        handler = getattr(self, f"_do_{type(a).__name__}")
        return handler(c, a)

    def _zk_ok(self, c: Controller) -> bool:
        return c.zk_reachable and self.zk.alive(c.session_id)

    def _promise_holds(self, c: Controller) -> bool:
        """As the executor does before claiming or fencing: no new promise from now on; an old one binds."""
        return c.link is not None and c.link.stop_promising(self.now) is not None

    def _do_ClaimLeadership(self, c: Controller, a: A.ClaimLeadership) -> bool:
        if self._promise_holds(c):
            return False
        return self._zk_ok(c) and self.zk.claim(c.name, c.session_id or 0, a.expected_epoch, self.now)

    def _do_TakeOverLeadership(self, c: Controller, a: A.TakeOverLeadership) -> bool:
        return self._zk_ok(c) and self.zk.take_over(c.name, c.session_id or 0, a.expected_epoch, a.stale_node,
                                                    self.now)

    def _do_FenceDeadPeer(self, c: Controller, a: A.FenceDeadPeer) -> bool:
        """As hacontrol.adapters.fencing does in CONFIRM_DEAD mode: power off (confirmed) first, then the disks."""
        if self._promise_holds(c) or not self.profile.power_fencing:
            return False
        ok = self._power_fence(c) and (not self.profile.pr or self._fence_pr(c, a.epoch))
        c.last_fence = FenceRecord(a.epoch, ok, self.now, power_confirmed=ok)
        return ok

    def _do_ReleaseLeadership(self, c: Controller, a: A.ReleaseLeadership) -> bool:
        return self._zk_ok(c) and self.zk.release(c.session_id or 0, a.epoch)

    def _do_FencePeer(self, c: Controller, a: A.FencePeer) -> bool:
        """As hacontrol.adapters.fencing does: reservations first (must succeed), then power after a loss."""
        pr_ok, power = True, False
        if self.profile.pr:
            pr_ok = self._fence_pr(c, a.epoch)
        ok = pr_ok
        if pr_ok and a.mode is A.FenceMode.UNPLANNED:
            if self.profile.power_fencing:
                power = self._power_fence(c)
                ok = self.profile.pr or power
            elif not self.profile.pr:
                ok = False  # nothing could fence a vanished peer
        c.last_fence = FenceRecord(a.epoch, ok, self.now, power_confirmed=power)
        if ok and self.serving(c):
            c.promoted_epoch = a.epoch  # fenced again while serving (a failsafe active leading anew)
        return ok

    def _fence_pr(self, c: Controller, epoch: int) -> bool:
        if not c.disk_reachable:
            return False
        key = pr_key(c.node_id, epoch)
        try:
            for d in self.disks:
                d.register(c.name, key)
                for other in {k for w, k in d.registrations.items() if w != c.name}:
                    d.preempt(c.name, other)
                if d.holder is None:
                    d.reserve(c.name)
        except ReservationConflict:
            return False
        return all(d.holder == c.name and d.registrations.get(c.name) == key and len(d.registrations) == 1
                   for d in self.disks)

    def _power_fence(self, c: Controller) -> bool:
        peer = self.peer_of(c.name)
        if not c.fence_device_ok:
            return False
        if peer.powered:
            self.log.append((self.now, peer.name, "powered off by fencing"))
            peer.power_off()
        return True

    def _do_RegisterStandby(self, c: Controller, a: A.RegisterStandby) -> bool:
        if not c.disk_reachable:
            return False
        for d in self.disks:
            d.register(c.name, pr_key(c.node_id, a.epoch))
        return True

    def _do_SetAlua(self, c: Controller, a: A.SetAlua) -> bool:
        if a.own != c.own_group:
            c.alua_changed_at = self.now
        c.own_group, c.peer_group = a.own, a.peer
        if a.own.accepts_io:
            c.promoted_epoch = c.view.epoch if c.view else None
        return True

    def _holds_elsewhere(self, c: Controller, address: str) -> bool:
        peer = self.peer_of(c.name)
        return peer.powered and address in peer.vips

    def _do_AddVips(self, c: Controller, a: A.AddVips) -> bool:
        if any(self._holds_elsewhere(c, addr) for addr in a.addresses):
            return False  # duplicate-address check saw it alive elsewhere
        c.vips |= set(a.addresses)
        if not self.profile.alua:
            c.promoted_epoch = c.view.epoch if c.view else None
        return True

    def _do_AnnounceVips(self, c: Controller, a: A.AnnounceVips) -> bool:
        return a.addresses <= c.vips

    def _do_RemoveVips(self, c: Controller, a: A.RemoveVips) -> bool:
        c.vips -= set(a.addresses)
        return True

    def _do_AdoptPeerPorts(self, c: Controller, a: A.AdoptPeerPorts) -> bool:
        peer = self.peer_of(c.name)
        if peer.powered and peer.own_ports_up:
            return False
        c.peer_ports_hosted = True
        return True

    def _do_ReleasePeerPorts(self, c: Controller, a: A.ReleasePeerPorts) -> bool:
        c.peer_ports_hosted = False
        return True

    def _do_BringUpOwnPorts(self, c: Controller, a: A.BringUpOwnPorts) -> bool:
        peer = self.peer_of(c.name)
        if peer.powered and peer.peer_ports_hosted:
            return False
        c.own_ports_up = True
        return True

    def _do_TakeDownOwnPorts(self, c: Controller, a: A.TakeDownOwnPorts) -> bool:
        c.own_ports_up = False
        return True

    def _do_ArmWatchdog(self, c: Controller, a: A.ArmWatchdog) -> bool:
        c.watchdog_armed = True
        if self.profile.hardware_watchdog:
            c.watchdog_deadline = self.now + self.timing.watchdog_timeout_s
        return True

    def _do_KickWatchdog(self, c: Controller, a: A.KickWatchdog) -> bool:
        if self.now > a.until:
            return False  # as the executor: too late for the confirmation that allowed it
        if self.profile.hardware_watchdog and c.watchdog_deadline is not None:
            c.watchdog_deadline = self.now + self.timing.watchdog_timeout_s
        return True

    def _do_DisarmWatchdog(self, c: Controller, a: A.DisarmWatchdog) -> bool:
        c.watchdog_armed = False
        c.watchdog_deadline = None
        return True

    def _do_Publish(self, c: Controller, a: A.Publish) -> bool:
        if not self._zk_ok(c):
            return False
        report = PeerReport(c.name, a.role, a.own_alua, a.vips, a.ready, a.epoch_seen, a.handed_off,
                            a.hosts_peer_ports, a.maintenance_seen, a.reason, a.blockers, a.frozen)
        self.zk.members[c.name] = (c.session_id or 0, report)
        return True

    def _do_FinishSwitchover(self, c: Controller, a: A.FinishSwitchover) -> bool:
        if not self._zk_ok(c):
            return False
        i = self.zk.switchover
        if i is not None and i.intent_id == a.intent_id and i.state == "pending":
            i.state, i.reason = a.outcome, a.reason
        return True

    def _do_KeyLost(self, c: Controller, a: A.KeyLost) -> bool:
        if a.policy == "reboot":
            c.power_off()
            c.boot_at = self.now + self.profile.boot_s
        return True

    # --- faults and operator requests -------------------------------------------------------

    def crash_agent(self, name: str) -> None:
        c = self.nodes[name]
        if c.agent_running:
            c.agent_running = False
            c.forget()

    def restart_agent(self, name: str) -> None:
        c = self.nodes[name]
        if c.powered and not c.agent_running:
            c.agent_running = True

    def freeze(self, name: str, seconds: float) -> None:
        c = self.nodes[name]
        if c.powered and c.agent_running:
            c.frozen_until = self.now + seconds

    def power_cycle(self, name: str) -> None:
        c = self.nodes[name]
        if c.powered:
            c.power_off()
            c.boot_at = self.now + self.profile.boot_s

    def request_switchover(self, target: str) -> str:
        self._intent_seq += 1
        intent_id = f"s{self._intent_seq}"
        self.zk.switchover = Intent(intent_id, target, self.now + self.timing.switchover_timeout_s)
        return intent_id

    def quiesce(self) -> None:
        """Stop every fault: heal partitions and disk paths, thaw, boot, restart, clear operator intents."""
        for c in self.nodes.values():
            c.zk_reachable = c.disk_reachable = c.fence_device_ok = True
            if c.frozen_until is not None:
                c.started = False  # thawed (SIGCONT) but has not run a tick yet
            c.frozen_until = None
            if not c.powered:
                c.powered, c.boot_at = True, None
            c.agent_running = True
        self.zk.maintenance = False
        self.net.heal()
        if self.zk.switchover is not None and self.zk.switchover.state == "pending":
            self.zk.switchover.state = "refused"

    # --- what the invariants look at ----------------------------------------------------------

    def writes_accepted(self, c: Controller) -> bool:
        """Would a write that an initiator sends through this controller reach the shared disks?"""
        if not c.powered or not c.disk_reachable:
            return False
        return all(d.write_allowed(c.name) for d in self.disks)

    def serving(self, c: Controller) -> bool:
        if not c.powered:
            return False
        if self.profile.alua:
            return c.own_group.accepts_io or c.peer_ports_hosted
        return bool(c.vips)

    def active_nodes(self) -> list[str]:
        return [c.name for c in self.nodes.values() if self.serving(c) and self.writes_accepted(c)]
