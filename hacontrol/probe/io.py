"""The probe's I/O engine: steady, self-verifying writes to a LUN region while a failover happens.

Every ``interval_s`` the engine writes the next sequence-numbered, checksummed block (blocks.py) round-robin
into the region, then reads back the block acknowledged on the previous tick. A timeout or a lost connection
closes the session; the engine logs in again, trying the portals in order with a bounded exponential backoff,
and reissues the same I/O (the same bytes: a reissue is idempotent). UNIT ATTENTION is reissued too, as every
initiator does. Other SCSI errors are recorded and the engine moves on. When the run ends (duration, stop file,
signal) a verification pass reads the region back and the ledger decides, for every acknowledged write, whether
it is verified, superseded or lost.

Bounds: the I/O phase starts no work after ``duration_s`` (a command already in flight may take up to
``command_timeout_s`` more); verification gets ``verify_budget_s`` (plus one command timeout); logins are cut at
the phase deadline and ``max_login_rounds`` rounds per outage; an I/O is reissued at most
``max_transport_retries`` times after transport failures and ``max_unit_attentions`` times after UNIT ATTENTION.
So a run ends within duration_s + verify_budget_s + 2 x command_timeout_s + ~1 s (logout).

Time: ``clock`` (monotonic seconds) and ``sleep`` are injected; tests/unit/test_probe_io.py drives the engine
with a fake clock and an in-memory LUN.
"""

from __future__ import annotations

import datetime
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from hacontrol.probe.blocks import MIN_BLOCK_SIZE, BlockState, WriteLedger, decode_block, encode_block
from hacontrol.probe.report import (
    ConnectionEvent,
    ErrorEvent,
    ErrorKind,
    LostWriteInfo,
    PauseStats,
    PauseTracker,
    Recorder,
    Report,
    SenseInfo,
)
from hacontrol.probe.session import (
    Capacity,
    LoginFailed,
    ProbeError,
    ScsiResult,
    Session,
    Target,
    parse_capacity16,
)
from hacontrol.probe.stop import StopControl

MAX_LOST_LISTED = 100


@dataclass(frozen=True)
class IoParams:
    portals: tuple[str, ...]
    target: Target
    duration_s: float = 60.0
    interval_s: float = 0.010
    region_blocks: int | None = None  # None: enough for the whole run without wrapping (within max_region_bytes)
    offset_blocks: int = 0
    command_timeout_s: float = 5.0
    login_timeout_s: float = 5.0
    max_login_rounds: int = 1000  # per outage; a round tries every portal once
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    max_transport_retries: int = 5
    # Linux's ALUA handler requeues 2A/06 (access state changed), 3F/0E (reported LUNs changed) and 29/xx
    # without counting them as retries, and a switchover followed by path changes can meet several UAs on
    # one I/O (one per new session); 10 is well above what one failover produces, and still bounded.
    max_unit_attentions: int = 10
    max_path_switches: int = 1000  # per I/O: ALUA path-state answers followed by another portal (bounded);
    # with the growing wait between rounds this lets an I/O wait out a transition or a no-active-path spell,
    # as ESXi does until its all-paths-down timeout
    verify_budget_s: float = 60.0
    verify_chunk_blocks: int = 64
    max_region_bytes: int = 64 << 20
    progress_every_s: float = 1.0

    def problems(self) -> list[str]:
        found = []
        if not self.portals:
            found.append("at least one portal is needed")
        positive = {"duration_s": self.duration_s, "interval_s": self.interval_s,
                    "command_timeout_s": self.command_timeout_s, "login_timeout_s": self.login_timeout_s,
                    "backoff_initial_s": self.backoff_initial_s, "verify_budget_s": self.verify_budget_s}
        found += [f"{name} must be > 0 (got {value})" for name, value in positive.items() if not value > 0]
        if self.region_blocks is not None and self.region_blocks < 1:
            found.append(f"region_blocks must be >= 1 (got {self.region_blocks})")
        if self.offset_blocks < 0:
            found.append(f"offset_blocks must be >= 0 (got {self.offset_blocks})")
        if self.verify_chunk_blocks < 1 or self.max_login_rounds < 1:
            found.append("verify_chunk_blocks and max_login_rounds must be >= 1")
        return found


class SessionLike(Protocol):
    portal: str | None

    @property
    def connected(self) -> bool: ...
    def connect(self, portal: str, timeout_s: float) -> None: ...
    def close(self, logout_timeout_s: float = 1.0) -> None: ...
    def read16(self, lba: int, blocks: int, block_size: int, timeout_s: float = 5.0) -> ScsiResult: ...
    def write16(self, lba: int, data: bytes, block_size: int, timeout_s: float = 5.0) -> ScsiResult: ...
    def read_capacity16(self, timeout_s: float = 5.0) -> ScsiResult: ...


class _Fatal(Exception):
    """The run cannot go on (login rejected before any success, LUN unusable): report and stop."""


def run_io(params: IoParams, *, session_factory: Callable[[Target], SessionLike] = Session,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
           wall_ns: Callable[[], int] = time.time_ns, stop: StopControl | None = None,
           log: Any = None) -> Report:
    problems = params.problems()
    if problems:
        raise ValueError("; ".join(problems))
    run = _Run(params, session_factory(params.target), clock=clock, sleep=sleep, wall_ns=wall_ns,
               stop=stop or StopControl(), log=log if log is not None else structlog.get_logger("hacontrol.probe"))
    return run.execute()


class _Run:
    def __init__(self, params: IoParams, session: SessionLike, *, clock: Callable[[], float],
                 sleep: Callable[[float], None], wall_ns: Callable[[], int], stop: StopControl, log: Any) -> None:
        self.p, self.session, self.clock, self.sleep, self.wall_ns = params, session, clock, sleep, wall_ns
        self.stop, self.log = stop, log
        self.run_id = uuid.uuid4().bytes
        self.rec = Recorder()
        self.ledger = WriteLedger()
        self.t0 = clock()
        self.started_at = datetime.datetime.fromtimestamp(wall_ns() / 1e9, datetime.UTC).isoformat()
        self.phase = "login"
        self.deadline = self.t0 + params.duration_s
        self.block_size = self.region_blocks = 0
        self.writes_attempted = self.reads = self.io_errors = self.unit_attentions = self.path_switches = 0
        self.order = list(params.portals)  # login order; an ALUA path-state answer rotates it
        self.ever_logged_in = False
        self.last_login_error = ""
        self.fatal: str | None = None
        self.stopped_by = "duration"
        self.pauses: PauseTracker | None = None
        self.pause_stats = PauseStats(0.0, 0.0, 0)
        self.last_acked: tuple[int, int] | None = None
        self.io_t = (0.0, 0.0)
        self.verification = (True, "nothing to verify")

    def _t(self) -> float:
        return round(self.clock() - self.t0, 6)

    def execute(self) -> Report:
        try:
            started = self._start()
            if started:
                self._io_phase()
                self._verify_phase()
        except _Fatal as exc:
            self.fatal = str(exc)
            self.log.error("probe.fatal", reason=self.fatal)
        finally:
            if self.session.connected:
                self.session.close()
                self.rec.connection(ConnectionEvent(self._t(), "logged_out", self.session.portal))
        return self._report()

    # -- start ------------------------------------------------------------------------------------------

    def _start(self) -> bool:
        result = self._io("read_capacity", None, self.session.read_capacity16)
        if result is None:
            reason = self.stop.requested()
            if reason is not None:
                self.stopped_by = reason
                raise _Fatal(f"stopped ({reason}) before the LUN could be used")
            detail = self.rec.errors[-1].detail if self.rec.errors else "no answer"
            raise _Fatal(f"cannot use {self.p.target.iqn} LUN {self.p.target.lun}: {detail}")
        capacity = parse_capacity16(result.data)
        self.block_size = capacity.block_size
        self.region_blocks = self._choose_region(capacity)
        self.log.info("probe.started", t_s=self._t(), block_size=self.block_size, region_blocks=self.region_blocks,
                      offset_blocks=self.p.offset_blocks, lun_blocks=capacity.blocks)
        return True

    def _choose_region(self, capacity: Capacity) -> int:
        if capacity.block_size < MIN_BLOCK_SIZE:
            raise _Fatal(f"block size {capacity.block_size} is below the probe's minimum {MIN_BLOCK_SIZE}")
        available = capacity.blocks - self.p.offset_blocks
        if available < 1:
            raise _Fatal(f"offset {self.p.offset_blocks} is beyond the LUN's {capacity.blocks} blocks")
        if self.p.region_blocks is not None:
            if self.p.region_blocks > available:
                raise _Fatal(f"region of {self.p.region_blocks} blocks at {self.p.offset_blocks} does not fit "
                             f"the LUN's {capacity.blocks} blocks")
            return self.p.region_blocks
        needed = math.ceil(self.p.duration_s / self.p.interval_s) + 1
        return max(1, min(needed, available, self.p.max_region_bytes // capacity.block_size))

    # -- I/O phase --------------------------------------------------------------------------------------

    def _io_phase(self) -> None:
        self.phase = "io"
        start = self.clock()
        self.deadline = start + self.p.duration_s
        self.pauses = PauseTracker(self._t())
        next_tick = next_progress = start
        # Pacing never runs ahead of the schedule, so the tick count is bounded by the duration.
        for seq in range(math.ceil(self.p.duration_s / self.p.interval_s) + 2):
            reason = self._io_should_end()
            if reason is not None:
                self.stopped_by = reason
                break
            candidate, self.last_acked = self.last_acked, None
            self._write(seq)
            if candidate is not None:
                self._readback(*candidate)
            if self.clock() >= next_progress:
                next_progress = self.clock() + self.p.progress_every_s
                self.log.info("probe.progress", t_s=self._t(), seq=seq, writes_acknowledged=self.ledger.acknowledged,
                              reads=self.reads, io_errors=self.io_errors)
            next_tick = self._pace(next_tick)
        end_t = self._t()
        self.io_t = (start - self.t0, end_t)
        self.pause_stats = self.pauses.finish(end_t)
        self.pauses = None
        self.log.info("probe.io_done", t_s=end_t, stopped_by=self.stopped_by,
                      writes_acknowledged=self.ledger.acknowledged)

    def _io_should_end(self) -> str | None:
        reason = self.stop.requested()
        if reason is not None:
            return reason
        return "duration" if self.clock() >= self.deadline else None

    def _pace(self, next_tick: float) -> float:
        next_tick += self.p.interval_s
        now = self.clock()
        if next_tick <= now:
            return now  # behind after a pause: carry on at the steady rate, do not burst to catch up
        for _ in range(math.ceil((next_tick - now) / 0.1) + 1):  # slices, so a stop request is seen quickly
            remaining = next_tick - self.clock()
            if remaining <= 0 or self.stop.requested() is not None:
                break
            self.sleep(min(remaining, 0.1))
        return next_tick

    def _write(self, seq: int) -> None:
        index = seq % self.region_blocks
        lba = self.p.offset_blocks + index
        block = encode_block(self.run_id, seq, lba, self.wall_ns(), self.block_size)
        self.writes_attempted += 1
        result = self._io("write", lba, lambda timeout: self.session.write16(lba, block, self.block_size, timeout))
        if result is None:
            self.ledger.write_failed(index, seq)
        else:
            self.ledger.write_acknowledged(index, seq)
            self.last_acked = (index, seq)

    def _readback(self, index: int, seq: int) -> None:
        if self.ledger.readback_expected(index) != seq:
            return  # overwritten since, or a failed write there makes the content uncertain
        lba = self.p.offset_blocks + index
        result = self._io("read", lba, lambda timeout: self.session.read16(lba, 1, self.block_size, timeout))
        if result is None:
            return
        self.reads += 1
        block = decode_block(result.data[:self.block_size], self.run_id, lba)
        if block.state is BlockState.INTACT and block.seq == seq:
            return
        self.ledger.readback_damaged(seq)
        self.io_errors += 1
        found = f"seq {block.seq}" if block.seq is not None else "no block of this run"
        self.rec.error(ErrorEvent(self._t(), self.phase, ErrorKind.DATA_MISMATCH, "read",
                                  f"read back LBA {lba}: expected seq {seq}, found {block.state.value} ({found})",
                                  lba, self.session.portal))

    # -- one I/O with retries ---------------------------------------------------------------------------

    def _io(self, op: str, lba: int | None, send: Callable[[float], ScsiResult]) -> ScsiResult | None:
        """Issue ``send`` until it completes: relogin + reissue after transport failures, reissue after UA."""
        transport_failures = unit_attentions = switches = 0
        for _ in range(self.p.max_transport_retries + self.p.max_unit_attentions + self.p.max_path_switches + 1):
            if not self._ensure_session():
                return self._abandon(op, lba, f"no session ({self.last_login_error or 'run ended'})")
            try:
                result = send(self.p.command_timeout_s)
            except ProbeError as exc:
                self._transport_error(exc, op, lba)
                transport_failures += 1
                if transport_failures > self.p.max_transport_retries:
                    return self._abandon(op, lba, f"{transport_failures} transport failures")
                continue
            if result.ok:
                self._completed()
                return result
            if result.sense is not None and result.sense.is_unit_attention() and \
                    unit_attentions < self.p.max_unit_attentions:
                unit_attentions += 1
                self.unit_attentions += 1
                self._scsi_error(result, op, lba, ErrorKind.UNIT_ATTENTION)
                continue
            if result.sense is not None and result.sense.is_alua_path_state() and switches < self.p.max_path_switches:
                switches += 1
                rounds = switches // len(self.order)
                self._next_path(result, op, lba, backoff=min(self.p.backoff_initial_s * 2 ** min(rounds, 10),
                                                             self.p.backoff_max_s) if rounds else 0.0)
                continue
            self._scsi_error(result, op, lba, ErrorKind.SCSI_ERROR)
            return None
        return self._abandon(op, lba, "too many reissues")

    def _next_path(self, result: ScsiResult, op: str, lba: int | None, backoff: float) -> None:
        """Behave like an ALUA initiator: leave a standby/transitioning path for the next portal.

        With one portal, or once every portal answered so, wait a little first (a transition is under way)."""
        self.path_switches += 1
        self._scsi_error(result, op, lba, ErrorKind.PATH_STATE)
        if len(self.order) > 1:
            self.session.close(0.2)
            self.rec.connection(ConnectionEvent(self._t(), "path_switch", self.order[0], result.describe()))
            self.order.append(self.order.pop(0))
        if backoff:
            self._wait_backoff(backoff)

    def _completed(self) -> None:
        t = self._t()
        if self.pauses is not None:
            self.pauses.completion(t)
        self.rec.io_completed(t)

    def _abandon(self, op: str, lba: int | None, why: str) -> None:
        if self.phase == "io":
            self.io_errors += 1
        self.rec.error(ErrorEvent(self._t(), self.phase, ErrorKind.IO_ABANDONED, op, why, lba, self.session.portal))

    def _scsi_error(self, result: ScsiResult, op: str, lba: int | None, kind: str) -> None:
        if self.phase == "io" and kind == ErrorKind.SCSI_ERROR:
            self.io_errors += 1
        sense = SenseInfo.of(result.sense) if result.sense is not None else None
        self.rec.error(ErrorEvent(self._t(), self.phase, kind, op, result.describe(), lba, self.session.portal,
                                  result.status_name, sense), condition=result.describe())
        self.log.warning("probe.scsi_error", t_s=self._t(), op=op, lba=lba, condition=result.describe())

    def _transport_error(self, exc: ProbeError, op: str, lba: int | None) -> None:
        t, portal = self._t(), self.session.portal
        self.rec.error(ErrorEvent(t, self.phase, exc.kind, op, str(exc), lba, portal))
        self.rec.connection(ConnectionEvent(t, "lost", portal, f"{exc.kind}: {exc}"))
        self.rec.outage_started(t, exc.kind, portal)
        self.log.warning("probe.connection_lost", t_s=t, portal=portal, kind=exc.kind, detail=str(exc))

    # -- login ------------------------------------------------------------------------------------------

    def _ensure_session(self) -> bool:
        if self.session.connected:
            return True
        backoff = self.p.backoff_initial_s
        for _ in range(self.p.max_login_rounds):
            for portal in list(self.order):
                if self._login_cut_short():
                    return False
                if self._login(portal):
                    return True
            self._wait_backoff(backoff)
            backoff = min(backoff * 2, self.p.backoff_max_s)
        self.rec.connection(ConnectionEvent(self._t(), "gave_up", None, f"{self.p.max_login_rounds} login rounds"))
        return False

    def _login_cut_short(self) -> bool:
        if self.stop.aborted or self.clock() >= self.deadline:
            return True
        # A stop request ends the I/O phase, not the verification pass: verification keeps trying.
        return self.phase != "verify" and self.stop.requested() is not None

    def _wait_backoff(self, backoff: float) -> None:
        for _ in range(math.ceil(backoff / 0.1) + 1):
            remaining = min(backoff, self.deadline - self.clock())
            if remaining <= 0 or self._login_cut_short():
                return
            step = min(remaining, 0.1)
            self.sleep(step)
            backoff -= step

    def _login(self, portal: str) -> bool:
        timeout = min(self.p.login_timeout_s, self.deadline - self.clock())
        self.rec.login_attempted()
        try:
            self.session.connect(portal, timeout)
        except LoginFailed as exc:
            self.last_login_error = str(exc)
            self.rec.error(ErrorEvent(self._t(), self.phase, ErrorKind.LOGIN_FAILED, "login", str(exc),
                                      portal=portal))
            self.log.info("probe.login_failed", t_s=self._t(), portal=portal, detail=str(exc))
            if not self.ever_logged_in and exc.configuration_error:
                raise _Fatal(f"login failed at {portal}: {exc}") from None
            return False
        t = self._t()
        self.ever_logged_in = True
        self.rec.connection(ConnectionEvent(t, "logged_in", portal))
        self.rec.relogged_in(t, portal)
        self.log.info("probe.logged_in", t_s=t, portal=portal)
        return True

    # -- verification -----------------------------------------------------------------------------------

    def _verify_phase(self) -> None:
        self.phase = "verify"
        self.deadline = self.clock() + self.p.verify_budget_s
        used = min(self.writes_attempted, self.region_blocks)
        chunk = self.p.verify_chunk_blocks
        unread = 0
        for first in range(0, used, chunk):
            count = min(chunk, used - first)
            if self.stop.aborted or self.clock() >= self.deadline:
                data = None
            else:
                lba = self.p.offset_blocks + first
                result = self._io("verify", lba, lambda timeout, lba=lba, count=count:
                                  self.session.read16(lba, count, self.block_size, timeout))
                data = result.data if result is not None else None
            unread += 0 if data is not None else count
            self._verify_blocks(first, count, data)
        why = "stopped" if self.stop.aborted else "could not read"
        self.verification = (unread == 0, f"{why} {unread} of {used} blocks" if unread else f"{used} blocks read")
        self._record_lost()
        self.log.info("probe.verified", t_s=self._t(), verified=self.ledger.verified, lost=len(self.ledger.lost),
                      superseded=self.ledger.superseded, complete=unread == 0)

    def _verify_blocks(self, first: int, count: int, data: bytes | None) -> None:
        size = self.block_size
        for i in range(count):
            index = first + i
            block = None
            if data is not None and len(data) >= (i + 1) * size:
                block = decode_block(data[i * size:(i + 1) * size], self.run_id, self.p.offset_blocks + index)
            self.ledger.verify(index, block)

    def _record_lost(self) -> None:
        for lost in self.ledger.lost[:MAX_LOST_LISTED]:
            self.rec.error(ErrorEvent(self._t(), "verify", ErrorKind.DATA_LOST, "verify",
                                      f"acknowledged write seq {lost.seq} not found: {lost.found}",
                                      self.p.offset_blocks + lost.index))

    # -- report -----------------------------------------------------------------------------------------

    def _report(self) -> Report:
        creds = self.p.target.credentials
        lost = tuple(LostWriteInfo(w.seq, self.p.offset_blocks + w.index, w.found)
                     for w in self.ledger.lost[:MAX_LOST_LISTED])
        complete, detail = self.verification
        return Report(
            run_id=str(uuid.UUID(bytes=self.run_id)), started_at=self.started_at, target=self.p.target.iqn,
            lun=self.p.target.lun, portals=self.p.portals, chap=creds.mode if creds else "none",
            block_size=self.block_size, region_offset_blocks=self.p.offset_blocks, region_blocks=self.region_blocks,
            interval_ms=self.p.interval_s * 1000, duration_s=round(self.io_t[1] - self.io_t[0], 6),
            stopped_by=self.stopped_by, fatal=self.fatal,
            io_pause_s=round(self.pause_stats.longest_s, 6),
            io_pause_start_s=round(self.pause_stats.longest_start_t_s, 6),
            pauses_over_1s=self.pause_stats.over_threshold, writes_attempted=self.writes_attempted,
            writes_acknowledged=self.ledger.acknowledged, writes_verified=self.ledger.verified,
            writes_superseded=self.ledger.superseded, writes_lost=len(self.ledger.lost), reads=self.reads,
            io_errors=self.io_errors, unit_attentions=self.unit_attentions, errors_by_kind=dict(self.rec.by_kind),
            scsi_conditions=dict(self.rec.conditions), connection_events=tuple(self.rec.events),
            outages=self.rec.frozen_outages(), errors=tuple(self.rec.errors), errors_dropped=self.rec.errors_dropped,
            lost_writes=lost, verification_complete=complete and self.fatal is None,
            verification_detail=detail if self.fatal is None else "not run: " + self.fatal,
            path_switches=self.path_switches,
        )
