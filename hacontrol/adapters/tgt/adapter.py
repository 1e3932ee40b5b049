"""TgtTarget: observe tgtd, plan the difference to the configuration, apply it with rollback, cut connections."""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from hacontrol.adapters.targets import refuse, rollback_summary
from hacontrol.agent.protocols import AdapterError, DeadlineExceeded
from hacontrol.config.schema import Config
from hacontrol.core.model import AluaState, DataPath

from . import commands as cmd
from .desired import (
    Desired,
    DesiredAccount,
    LunExtras,
    desired_state,
    filesystem_problems,
    fingerprinter,
    portal_problems,
    problems,
    warnings,
)
from .plan import Known, Step, assign_tids, diff, snapshot_problems
from .snapshot import (
    TcpSocket,
    TgtConnection,
    TgtSnapshot,
    normalize_address,
    parse_accounts,
    parse_connections,
    parse_discovery,
    parse_portals,
    parse_ss,
    parse_targets,
)
from .tgtadm import Tgtadm, TgtadmError, TgtdUnreachable, run_ss

log = structlog.get_logger("hacontrol.tgt")


@dataclass(frozen=True)
class ApplyReport:
    steps: tuple[str, ...]  # what was done, in order (no secrets)
    mutating_commands: int
    duration_s: float
    warnings: tuple[str, ...] = ()

    @property
    def noop(self) -> bool:
        return self.mutating_commands == 0


@dataclass
class _Ledger:
    """What this instance set that tgtadm cannot show; dropped for objects tgtd no longer has."""

    luns: dict[tuple[int, int], tuple[str, LunExtras]] = field(default_factory=dict)  # (tid, lun) -> path, extras
    accounts: dict[str, DesiredAccount] = field(default_factory=dict)

    def prune(self, snap: TgtSnapshot) -> None:
        """Forget what tgtd no longer has (restarted, or changed by someone else)."""
        present = {(t.tid, lu.lun): lu.path for t in snap.targets for lu in t.disk_luns}
        self.luns = {k: v for k, v in self.luns.items() if present.get(k) == v[0]}
        self.accounts = {u: a for u, a in self.accounts.items() if u in snap.accounts}

    def view(self) -> Known:
        return Known(luns={k: extras for k, (_, extras) in self.luns.items()}, accounts=dict(self.accounts))

    def record(self, desired: Desired, tids: dict[str, int]) -> None:
        for dt in desired.targets:
            for dl in dt.luns:
                self.luns[(tids[dt.iqn], dl.lun)] = (dl.path, dl.extras)
        self.accounts.update({a.user: a for a in desired.accounts})


class TgtTarget:
    """The configured target model on one tgtd, reached through ``tgtadm -C control_port``.

    Targets with tid >= ``tid_base`` belong to the adapter; those below are left
    alone (a lab may keep, e.g., its fencing disk there). ``netns`` is where
    tgtd's TCP connections live (for ``cut_connections``); tgtadm itself
    reaches tgtd through a filesystem socket from any namespace.
    """

    def __init__(self, control_port: int | None = None, netns: str | None = None, tid_base: int = 1,
                 timeout_s: float = 5.0, *, runner: Tgtadm | None = None):
        if tid_base < 1:
            raise ValueError("tid_base must be >= 1 (tgt has no target 0)")
        self.control_port = control_port
        self.netns = netns
        self.tid_base = tid_base
        self.timeout_s = timeout_s
        self.runner = runner if runner is not None else Tgtadm(control_port, timeout_s)
        self._fingerprint = fingerprinter()
        self._ledger = _Ledger()
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"TgtTarget(control_port={self.control_port!r}, netns={self.netns!r}, tid_base={self.tid_base})"

    def observe(self, cfg: Config | None = None, deadline: float | None = None) -> TgtSnapshot:
        """Read tgtd: targets, accounts, discovery accounts, portals. ``cfg`` is not needed to read."""
        del cfg  # accepted for symmetry with plan/apply; the snapshot is the whole tgtd
        run = self.runner.run
        targets = parse_targets(run(cmd.show_targets(), deadline))
        accounts = parse_accounts(run(cmd.show_accounts(), deadline))
        incoming, outgoing = parse_discovery(run(cmd.show_system(), deadline))
        portals = parse_portals(run(cmd.show_portals(), deadline))
        snap = TgtSnapshot(targets, accounts, incoming, outgoing, portals)
        self._ledger.prune(snap)
        return snap

    def configured(self, cfg: Config, node: str | None = None, deadline: float | None = None) -> bool:
        """True when tgtd holds exactly what ``cfg`` asks for (as far as this instance can tell).

        The same target is configured on both controllers, so ``node`` only
        adds the check that it is one of the configuration's nodes.
        """
        if problems(cfg, node):
            return False
        snap = self.observe(cfg, deadline)
        desired = desired_state(cfg, self._fingerprint)
        if portal_problems(cfg, snap) or snapshot_problems(desired, snap, self.tid_base):
            return False
        return not diff(desired, snap, tid_base=self.tid_base, known=self._ledger.view())

    def plan(self, cfg: Config, node: str, snapshot: TgtSnapshot | None = None, *,
             reassert: bool = False) -> list[Step]:
        """The steps apply would run. Pure when ``snapshot`` is given; raises AdapterError for a bad config."""
        found = problems(cfg, node)
        if found:
            raise refuse("configuration not applicable to tgt", found)
        snap = snapshot if snapshot is not None else self.observe(cfg)
        return self._diff(cfg, snap, reassert)[1]

    def _diff(self, cfg: Config, snap: TgtSnapshot, reassert: bool) -> tuple[Desired, list[Step]]:
        desired = desired_state(cfg, self._fingerprint)
        found = portal_problems(cfg, snap) + snapshot_problems(desired, snap, self.tid_base)
        if found:
            raise refuse(f"tgtd (control port {self.control_port}) conflicts with the configuration", found)
        return desired, diff(desired, snap, tid_base=self.tid_base, known=self._ledger.view(), reassert=reassert)

    def apply(self, cfg: Config, node: str, deadline: float | None = None, *, reassert: bool = False) -> ApplyReport:
        """Validate, diff, apply; on a failed step undo this call's steps and raise AdapterError.

        ``reassert`` sets again what tgtadm cannot show (secrets, vendor/product,
        write cache) instead of adopting it: after changing secrets while the
        agent was down, or to be sure.
        """
        started = time.monotonic()
        found = problems(cfg, node) + filesystem_problems(cfg)
        if found:
            raise refuse("configuration not applicable to tgt", found)
        self._warn(cfg)
        snap = self.observe(cfg, deadline)
        desired, steps = self._diff(cfg, snap, reassert)
        before = self.runner.mutations
        done = self._run_steps(steps, deadline)
        self._ledger.record(desired, assign_tids(desired, snap, self.tid_base))
        report = ApplyReport(steps=tuple(str(s) for s in done), mutating_commands=self.runner.mutations - before,
                             duration_s=time.monotonic() - started,
                             warnings=tuple(str(w) for w in warnings(cfg)))
        log.info("tgt_apply", control_port=self.control_port, node=node, steps=len(done),
                 mutating_commands=report.mutating_commands, duration_s=round(report.duration_s, 4))
        return report

    def _warn(self, cfg: Config) -> None:
        for w in warnings(cfg):
            if str(w) not in self._warned:
                self._warned.add(str(w))
                log.warning("tgt_config_warning", key=w.key, message=w.message, fix=w.fix)

    def _run_steps(self, steps: list[Step], deadline: float | None) -> list[Step]:
        done: list[Step] = []
        for step in steps:
            try:
                self.runner.run(step.command, deadline)
            except AdapterError as exc:
                message = exc.message if isinstance(exc, TgtadmError) else str(exc)
                log.error("tgt_step_failed", step=str(step), error=message)
                rollback = self._rollback(done)
                error = DeadlineExceeded if isinstance(exc, DeadlineExceeded) else AdapterError
                raise error(f"tgt apply failed at step {len(done) + 1}/{len(steps)} ({step}): "
                            f"{message}; {rollback}") from None
            log.debug("tgt_step", step=str(step))
            done.append(step)
        return done

    def _rollback(self, done: list[Step]) -> str:
        """Undo ``done`` in reverse. Runs past the caller's deadline (each command still has its timeout):
        a half-applied configuration is worse than a late error."""
        failures: list[str] = []
        notes: list[str] = []
        for step in reversed(done):
            if step.note:
                notes.append(f"{step}: {step.note}")
            for command in step.undo:
                try:
                    self.runner.run(command, None)
                except (TgtdUnreachable, DeadlineExceeded) as exc:
                    # tgtd is gone or hung: every further undo would fail the same way, one timeout each.
                    failures.append(f"{step}: {exc}; rollback abandoned")
                    log.error("tgt_rollback", steps=len(done), abandoned=True)
                    return f"ROLLBACK ABANDONED: {'; '.join(failures)}"
                except AdapterError as exc:
                    failures.append(f"{step}: {exc}")
        log.warning("tgt_rollback", steps=len(done), failures=len(failures))
        return rollback_summary(len(done), notes, failures)

    def cut_connections(self, address: str, deadline: float) -> None:
        """Close every iSCSI connection of this tgtd whose local address is ``address``.

        tgtadm shows only the initiator's address of a connection, so the local
        side comes from ``ss`` in tgtd's namespace; see :func:`connections_on`.
        """
        local = normalize_address(str(ipaddress.ip_interface(address).ip))
        ports = {port for _, port in parse_portals(self.runner.run(cmd.show_portals(), deadline))}
        sockets = parse_ss(run_ss(self.netns, self.timeout_s, deadline))
        conns = [c for st in parse_targets(self.runner.run(cmd.show_targets(), deadline)) if st.nexuses
                 for c in parse_connections(st.tid, self.runner.run(cmd.show_connections(st.tid), deadline))]
        victims, ambiguous = connections_on(local, ports, sockets, conns)
        closed = 0
        for conn in victims:
            try:
                self.runner.run(cmd.delete_connection(conn.tid, conn.sid, conn.cid), deadline)
                closed += 1
            except TgtadmError as exc:  # the initiator may have gone on its own meanwhile
                log.debug("tgt_conn_gone", tid=conn.tid, sid=conn.sid, cid=conn.cid, error=exc.message)
        log.info("tgt_cut_connections", address=local, closed=closed, ambiguous_initiators=sorted(ambiguous))

    def port(self, cfg: Config, node: str) -> TgtTargetPort:
        """This adapter as the agent's TargetPort for one configuration and node."""
        return TgtTargetPort(self, cfg, node)


def connections_on(local: str, ports: set[int], sockets: tuple[TcpSocket, ...],
                   conns: list[TgtConnection]) -> tuple[list[TgtConnection], set[str]]:
    """The tgt connections to close for one local address (pure).

    A connection is matched by its initiator address. When an initiator also
    has connections to another local address of this tgtd, the two cannot be
    told apart, so all of that initiator's connections are closed: a needless
    reconnect costs milliseconds, a connection left on a vanished address
    stalls I/O for the initiator's whole timeout.
    """
    here = Counter(s.peer for s in sockets if s.local == local and s.local_port in ports)
    elsewhere = {s.peer for s in sockets if s.local != local and s.local_port in ports}
    victims = [c for c in conns if normalize_address(c.address) in here]
    ambiguous = {c.address for c in victims if normalize_address(c.address) in elsewhere}
    return victims, ambiguous


class TgtTargetPort:
    """``hacontrol.agent.protocols.TargetPort`` for tgt: no ALUA (VIP-only failover).

    Checking that tgtd still matches the configuration costs four tgtadm runs,
    so a positive answer is reused for ``recheck_s``; a negative one is not
    cached (the agent then applies the configuration, which re-checks).
    """

    def __init__(self, target: TgtTarget, cfg: Config, node: str, recheck_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.target = target
        self.cfg = cfg
        self.node = node
        self.recheck_s = recheck_s
        self.clock = clock
        self._ok_at: float | None = None

    def observe(self) -> DataPath:
        now = self.clock()
        if self._ok_at is None or now - self._ok_at >= self.recheck_s:
            ok = self.target.configured(self.cfg, self.node)
            self._ok_at = now if ok else None
        return DataPath(configured=self._ok_at is not None, own_group=None, peer_group=None)

    def update_config(self, cfg: Config) -> None:
        """A new configuration arrived (hactl config apply): the next observe re-checks, ConfigureTarget applies."""
        self.cfg = cfg
        self._ok_at = None

    def configure(self, deadline: float) -> str:
        self._ok_at = None
        report = self.target.apply(self.cfg, self.node, deadline)
        self._ok_at = self.clock()
        return "tgt: already configured" if report.noop else f"tgt: {len(report.steps)} step(s) applied"

    def set_alua(self, own: AluaState, peer: AluaState, deadline: float) -> None:
        raise AdapterError(f"tgt has no ALUA: asked to set {own.name}/{peer.name}; with backend tgt the agent "
                           "must run VIP-only (Spec.alua = False)")

    def cut_connections(self, address: str, deadline: float) -> None:
        self.target.cut_connections(address, deadline)
