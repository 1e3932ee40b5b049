"""Run a plan's actions in order through the adapters; stop at the first failure.

Each step gets its own deadline (``operation_timeout_s``; fencing gets the sum
of its methods' timeouts). A step that needs the lease is refused once the
plan's ``lease_valid_until`` has passed, even if the plan was correct when it
was made: a long fence must never be followed by a promotion on an expired
lease.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from hacontrol.agent.protocols import AdapterError, ManagedAddress, NetworkPort, TargetPort, WatchdogPort
from hacontrol.core import actions as A
from hacontrol.core.decide import Plan
from hacontrol.core.model import FenceRecord, PeerReport
from hacontrol.core.timing import Timing

log = structlog.get_logger("hacontrol.agent")


@dataclass(frozen=True)
class StepResult:
    action: str
    ok: bool
    duration_s: float
    error: str = ""
    detail: str = ""
    at: float = 0.0  # monotonic time the step ended


class CoordinationSink(Protocol):
    def claim(self, expected_epoch: int, deadline: float) -> bool: ...
    def take_over(self, expected_epoch: int, stale_node: str, deadline: float) -> bool: ...
    def release(self, epoch: int, deadline: float) -> bool: ...
    def publish(self, report: PeerReport, extra: dict[str, Any], deadline: float) -> None: ...
    def finish_switchover(self, intent_id: str, outcome: str, reason: str, deadline: float) -> bool: ...
    def read_reservations(self, deadline: float) -> dict[str, dict[str, Any]]: ...
    def publish_reservations(self, epoch: int, changed: dict[str, str], deadline: float) -> None: ...


class FencingSink(Protocol):
    def fence_peer(self, epoch: int, mode: A.FenceMode, deadline: float) -> FenceRecord: ...
    def register_standby(self, epoch: int, deadline: float) -> None: ...


class PortMover(Protocol):
    """Port takeover (LIO only): adopt or hand back the peer's portals and target port."""

    def adopt_peer(self, epoch: int, deadline: float) -> None: ...
    def release_peer(self, deadline: float) -> None: ...
    def bring_up_own(self, deadline: float) -> None: ...
    def take_down_own(self, deadline: float) -> None: ...


class Rebooter(Protocol):
    def reboot(self, reason: str) -> None: ...


class Promises(Protocol):
    """The peer link's promises (``hacontrol.adapters.peerlink.PeerLink``)."""

    def stop_promising(self) -> float | None: ...


class LeaseExpired(AdapterError):
    pass


@dataclass
class Executor:
    timing: Timing
    coordinator: CoordinationSink
    target: TargetPort
    network: NetworkPort
    fencing: FencingSink
    watchdog: WatchdogPort
    vips: Mapping[str, ManagedAddress]
    ports: PortMover | None = None
    rebooter: Rebooter | None = None
    promises: Promises | None = None
    fence_budget_s: float = 30.0
    ports_budget_s: float = 0.0  # port moves and VIP claims; below operation_timeout_s: operation_timeout_s
    publish_extra: Callable[[], dict[str, Any]] = dict
    clock: Callable[[], float] = time.monotonic
    announced_at: float | None = None  # last claim or announcement of our VIPs (read by the observer)
    on_published: Callable[[], None] = lambda: None
    crash_after: str = field(default_factory=lambda: os.environ.get("HACONTROL_FAULT_CRASH_AFTER", ""))
    after_adopt: Callable[[], str] | None = None  # tickle the peer's initiators once its ports are ours
    heartbeat: Callable[[], None] = lambda: None  # called while a long step (fencing) runs: keeps systemd's
    # watchdog fed, because a power fence may legitimately take longer than WatchdogSec

    def run(self, plan: Plan) -> tuple[StepResult, ...]:
        results: list[StepResult] = []
        failed = False
        for action in plan.actions:
            if failed and not (isinstance(action, A.Publish) and action.handed_off is None):
                # A failed step ends the plan. Only a plain report of what we are still goes out (so operators
                # see why); never a hand-off report, which promises that the skipped steps happened.
                continue
            start = self.clock()
            try:
                if action.needs_lease and (plan.lease_valid_until is None or start >= plan.lease_valid_until):
                    raise LeaseExpired("lease ran out before this step")
                budget = self._budget(action)
                detail = self._do(action, start + budget)
                ok, error = True, ""
            except AdapterError as exc:
                ok, error, detail = False, str(exc), ""
            except Exception as exc:  # an adapter bug must not kill the loop; it is logged with its type
                ok, error, detail = False, f"{type(exc).__name__}: {exc}", ""
                log.exception("step_crashed", action=action.name)
            end = self.clock()
            results.append(StepResult(action.name, ok, end - start, error, detail, end))
            if ok and action.name == self.crash_after and self._crash_armed():
                # Fault injection for the chaos tests only (HACONTROL_FAULT_CRASH_AFTER=FencePeer): die right
                # after this step, as a controller that loses power in the middle of a takeover would.
                log.error("fault_injected_crash", after=action.name)
                os._exit(70)
            # a skipped kick changes nothing the later steps rely on: they run (each under its own checks)
            failed = failed or (not ok and not isinstance(action, A.KickWatchdog))
        return tuple(results)

    def _budget(self, action: A.Action) -> float:
        if isinstance(action, A.FencePeer | A.FenceDeadPeer):
            return self.fence_budget_s
        if isinstance(action, A.LoadReservations):
            # re-exporting the LUNs whose reservations differ: 0.25-0.31 s for one in the rig (docs/lio.md)
            return max(self.ports_budget_s, self.fence_budget_s, self.timing.operation_timeout_s)
        if isinstance(action, A.AdoptPeerPorts | A.ReleasePeerPorts | A.BringUpOwnPorts | A.TakeDownOwnPorts
                      | A.AddVips):
            # moving a port or a VIP includes the duplicate-address check and the announcements
            return max(self.ports_budget_s, self.timing.operation_timeout_s)
        return self.timing.operation_timeout_s

    def _do(self, a: A.Action, deadline: float) -> str:
        if isinstance(a, A.ClaimLeadership | A.TakeOverLeadership | A.FenceDeadPeer):
            return self._take_lead(a, deadline)
        if isinstance(a, A.ReleaseLeadership):
            if not self.coordinator.release(a.epoch, deadline):
                raise AdapterError("leader znode not ours to release")
        elif isinstance(a, A.FencePeer):
            record = self._while_alive(lambda: self.fencing.fence_peer(a.epoch, a.mode, deadline), deadline)
            if not record.ok:
                raise AdapterError(f"fencing failed: {record.detail}")
            return record.detail
        elif isinstance(a, A.RegisterStandby):
            self.fencing.register_standby(a.epoch, deadline)
        elif isinstance(a, A.SetAlua):
            self.target.set_alua(a.own, a.peer, deadline)
        elif isinstance(a, A.AddVips):
            for key in sorted(a.addresses):
                self.network.claim(self._vip(key), deadline, check_duplicates=a.check_duplicates)
            self.announced_at = self.clock()
        elif isinstance(a, A.AnnounceVips):
            for key in sorted(a.addresses):
                self.network.announce(self._vip(key), deadline)
            self.announced_at = self.clock()
        elif isinstance(a, A.RemoveVips):
            for key in sorted(a.addresses):
                address = self._vip(key)
                self.target.cut_connections(str(address.address.ip), deadline)
                self.network.release(address, deadline)
        elif isinstance(a, A.AdoptPeerPorts | A.ReleasePeerPorts | A.BringUpOwnPorts | A.TakeDownOwnPorts):
            return self._ports(a, deadline)
        elif isinstance(a, A.ConfigureTarget):
            return self.target.configure(deadline)
        elif isinstance(a, A.LoadReservations | A.PublishReservations):
            return self._reservations(a, deadline)
        elif isinstance(a, A.ArmWatchdog):
            self.watchdog.arm()
        elif isinstance(a, A.KickWatchdog):
            late = self.clock() - a.until
            if late > 0:
                raise AdapterError(f"kick skipped: {late:.3f} s past the confirmation that allowed it")
            self.watchdog.kick()
        elif isinstance(a, A.DisarmWatchdog):
            self.watchdog.disarm()
        elif isinstance(a, A.Publish):
            report = PeerReport("", a.role, a.own_alua, a.vips, a.ready, a.epoch_seen, a.handed_off,
                                a.hosts_peer_ports, a.maintenance_seen, a.reason, a.blockers, a.frozen)
            self.coordinator.publish(report, self.publish_extra(), deadline)
            self.on_published()
        elif isinstance(a, A.FinishSwitchover):
            self.coordinator.finish_switchover(a.intent_id, a.outcome, a.reason, deadline)
        elif isinstance(a, A.KeyLost):
            log.error("reservation_key_lost", policy=a.policy)
            if a.policy == "reboot" and self.rebooter is not None:
                self.rebooter.reboot("reservation key lost while serving")
        else:
            raise AdapterError(f"no handler for {a.name}")
        return ""

    def _reservations(self, a: A.Action, deadline: float) -> str:
        """The initiators' persistent reservations: load what ZooKeeper holds, or publish what changed here
        (LIO only: the core plans these only for a data path that reports them)."""
        target = self.target
        if not hasattr(target, "load_reservations"):
            raise AdapterError(f"{type(target).__name__} keeps no initiators' reservations")
        if isinstance(a, A.LoadReservations):
            published = self.coordinator.read_reservations(deadline)
            return target.load_reservations(a.epoch, published, a.keep_local, deadline)
        assert isinstance(a, A.PublishReservations)
        changed = target.reservations_to_publish()
        if not changed:
            return ""
        self.coordinator.publish_reservations(a.epoch, changed, deadline)
        target.reservations_published(changed)
        return f"{len(changed)} LUN(s) published"

    def _take_lead(self, a: A.Action, deadline: float) -> str:
        """Claiming, and the fast takeover's two steps (fence a silent peer off, then take its znode over)."""
        if isinstance(a, A.ClaimLeadership):
            self._bound_by_no_promise()
            if not self.coordinator.claim(a.expected_epoch, deadline):
                raise AdapterError("lost the race for the leader znode")
        elif isinstance(a, A.TakeOverLeadership):
            if not self.coordinator.take_over(a.expected_epoch, a.stale_node, deadline):
                raise AdapterError(f"lost the race: the leader znode or the epoch changed since "
                                   f"{a.stale_node}@{a.expected_epoch}")
        elif isinstance(a, A.FenceDeadPeer):
            self._bound_by_no_promise()
            record = self._while_alive(
                lambda: self.fencing.fence_peer(a.epoch, A.FenceMode.CONFIRM_DEAD, deadline), deadline)
            if not (record.ok and record.power_confirmed):
                raise AdapterError(f"the silent peer was not confirmed off: {record.detail}")
            return record.detail
        return ""

    def _bound_by_no_promise(self) -> None:
        """Before claiming or fencing: stop giving the peer promises, and refuse while an earlier one holds (the
        link's thread may have promised after this tick's observation)."""
        if self.promises is None:
            return
        until = self.promises.stop_promising()
        if until is not None:
            raise AdapterError(f"promised the peer over the link not to claim for {until - self.clock():.2f} s more")

    def _crash_armed(self) -> bool:
        """With HACONTROL_FAULT_CRASH_ONCE=PATH the crash happens once: PATH is created and disarms it."""
        once = os.environ.get("HACONTROL_FAULT_CRASH_ONCE", "")
        if not once:
            return True
        try:
            with open(once, "x"):
                return True
        except FileExistsError:
            return False

    def _while_alive(self, call: Callable[[], Any], deadline: float) -> Any:
        """Run a long step in a worker thread and keep beating until it ends (it is bounded by ``deadline``)."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fence")
        future = pool.submit(call)
        try:
            for _ in range(100_000):  # bounded: the deadline check below ends it long before
                try:
                    return future.result(timeout=0.1)
                except FutureTimeout:
                    self.heartbeat()
                    if self.clock() > deadline + 5.0:
                        # The step ignores its own deadline: report it; the worker ends when its call does.
                        raise AdapterError("fencing did not return within its deadline") from None
            raise AdapterError("fencing did not return")
        finally:
            pool.shutdown(wait=False)

    def _vip(self, key: str) -> ManagedAddress:
        try:
            return self.vips[key]
        except KeyError:
            raise AdapterError(f"{key} is not a configured address") from None

    def _ports(self, a: A.Action, deadline: float) -> str:
        if self.ports is None:
            raise AdapterError("port takeover needs the LIO backend; set cluster.port_takeover = false")
        if isinstance(a, A.AdoptPeerPorts):
            self.ports.adopt_peer(a.epoch, deadline)
            # The peer's portals answer from here now: make its initiators try them at once (tickle ACKs).
            return self.after_adopt() if self.after_adopt is not None else ""
        if isinstance(a, A.ReleasePeerPorts):
            self.ports.release_peer(deadline)
        elif isinstance(a, A.TakeDownOwnPorts):
            self.ports.take_down_own(deadline)
        else:
            self.ports.bring_up_own(deadline)
        return ""
