"""What a probe run saw, as frozen dataclasses and JSON (pure: no I/O).

Consumers: io.py fills a :class:`Recorder` during the run and freezes it into a :class:`Report`;
cli/probe.py prints ``Report.to_json()`` or ``Report.summary()``; lab and chaos tests read the JSON keys
``io_pause_s``, ``io_errors``, ``writes_lost``, ``writes_acknowledged``, ``writes_verified`` (stable, schema
``hacontrol.probe.io/1``). Times are seconds since the run started (monotonic), ``started_at`` anchors them.
No field ever holds a CHAP secret: the report knows only the CHAP mode.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from hacontrol.probe.sense import Sense

SCHEMA = "hacontrol.probe.io/1"
PAUSE_THRESHOLD_S = 1.0


class ErrorKind:
    TIMEOUT = "timeout"  # a command got no answer within the command timeout
    CONNECTION_LOST = "connection_lost"  # the transport failed under a command
    LOGIN_FAILED = "login_failed"  # a (re)login attempt failed: refused, rejected, timed out
    SCSI_ERROR = "scsi_error"  # a command completed with a status other than GOOD (UA excluded)
    UNIT_ATTENTION = "unit_attention"  # CHECK CONDITION with sense key 6: retried, as every initiator does
    DATA_MISMATCH = "data_mismatch"  # an in-run read-back returned other data than was acknowledged
    IO_ABANDONED = "io_abandoned"  # an I/O given up: transport retries exhausted or the run ended first
    DATA_LOST = "data_lost"  # found by the final verification pass
    PATH_STATE = "path_state"  # ALUA standby/transitioning/unavailable on this path: the probe moved on


@dataclass(frozen=True)
class SenseInfo:
    code: str  # "02/04/0A"
    key: str
    description: str

    @classmethod
    def of(cls, sense: Sense) -> SenseInfo:
        return cls(sense.code, sense.key_name, sense.asc_name)


@dataclass(frozen=True)
class ErrorEvent:
    t_s: float
    phase: str  # "login" (before I/O starts), "io" or "verify"
    kind: str  # an ErrorKind value
    op: str  # "write", "read", "login", "read_capacity", "verify"
    detail: str
    lba: int | None = None
    portal: str | None = None
    status: str | None = None  # SCSI status name
    sense: SenseInfo | None = None


@dataclass(frozen=True)
class ConnectionEvent:
    t_s: float
    event: str  # "logged_in", "lost", "gave_up", "logged_out"
    portal: str | None
    detail: str = ""


@dataclass(frozen=True)
class Outage:
    """One loss of the session and what followed it."""

    lost_t_s: float
    cause: str  # ErrorKind.TIMEOUT or ErrorKind.CONNECTION_LOST
    lost_portal: str | None
    relogin_t_s: float | None  # None: never logged in again
    relogin_portal: str | None
    login_attempts: int
    first_io_t_s: float | None  # first successful I/O after the relogin


@dataclass(frozen=True)
class PauseStats:
    longest_s: float
    longest_start_t_s: float
    over_threshold: int
    threshold_s: float = PAUSE_THRESHOLD_S


class PauseTracker:
    """Longest gap between consecutive successful I/O completions, fed one completion at a time.

    The start of the I/O phase and its end count as completions, so that an outage at either edge (the target
    dies and the run is stopped before it comes back) still shows as a pause.
    """

    def __init__(self, start_t: float, threshold_s: float = PAUSE_THRESHOLD_S) -> None:
        self._last = start_t
        self._threshold = threshold_s
        self._longest = 0.0
        self._longest_start = start_t
        self._over = 0

    def completion(self, t: float) -> None:
        gap = t - self._last
        if gap > self._longest:
            self._longest, self._longest_start = gap, self._last
        if gap > self._threshold:
            self._over += 1
        self._last = max(self._last, t)

    def finish(self, end_t: float) -> PauseStats:
        self.completion(end_t)
        return PauseStats(self._longest, self._longest_start, self._over, self._threshold)


def compute_pauses(completions: Iterable[float], start_t: float, end_t: float,
                   threshold_s: float = PAUSE_THRESHOLD_S) -> PauseStats:
    tracker = PauseTracker(start_t, threshold_s)
    for t in sorted(completions):
        tracker.completion(t)
    return tracker.finish(end_t)


@dataclass(frozen=True)
class LostWriteInfo:
    seq: int
    lba: int
    found: str


@dataclass(frozen=True)
class Report:
    """The result of one ``probe io`` run.

    io_errors: I/O-phase reads and writes that an application would have seen fail. That is: a command that
    completed with a SCSI status other than GOOD (CHECK CONDITION with any sense key but UNIT ATTENTION,
    RESERVATION CONFLICT, BUSY, TASK SET FULL ...); a UNIT ATTENTION only if it was still returned after
    ``max_unit_attentions`` reissues; an I/O abandoned because its transport retries ran out or the run ended
    while it waited for a relogin; and a read-back that returned data other than the acknowledged write.
    Not counted: timeouts and connection losses after which the probe logged in again and the reissued I/O
    completed (the initiator hides those from applications; they show as the pause, the outages and
    ``errors_by_kind``), failed login attempts, and anything in the verification pass (that is writes_lost).
    """

    run_id: str
    started_at: str
    target: str
    lun: int
    portals: tuple[str, ...]
    chap: str
    block_size: int
    region_offset_blocks: int
    region_blocks: int
    interval_ms: float
    duration_s: float
    stopped_by: str
    fatal: str | None
    io_pause_s: float
    io_pause_start_s: float
    pauses_over_1s: int
    writes_attempted: int
    writes_acknowledged: int
    writes_verified: int
    writes_superseded: int
    writes_lost: int
    reads: int
    io_errors: int
    unit_attentions: int
    errors_by_kind: dict[str, int]
    scsi_conditions: dict[str, int]
    connection_events: tuple[ConnectionEvent, ...]
    outages: tuple[Outage, ...]
    errors: tuple[ErrorEvent, ...]
    errors_dropped: int
    lost_writes: tuple[LostWriteInfo, ...]
    verification_complete: bool
    verification_detail: str
    path_switches: int = 0  # ALUA path-state answers after which the probe used another portal
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, object]:
        return {"schema": self.schema, **{k: v for k, v in dataclasses.asdict(self).items() if k != "schema"}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def failure_reason(self) -> str | None:
        """One line when the run must fail (exit non-zero), else None."""
        if self.fatal:
            return self.fatal
        if self.writes_lost and not self.verification_complete:
            return (f"verification incomplete ({self.verification_detail}): {self.writes_lost} of "
                    f"{self.writes_acknowledged} acknowledged writes not read back intact")
        if self.writes_lost:
            first = self.lost_writes[0] if self.lost_writes else None
            where = f" (first: seq {first.seq} at LBA {first.lba}: found {first.found})" if first else ""
            return f"{self.writes_lost} of {self.writes_acknowledged} acknowledged writes lost{where}"
        return None

    def summary(self) -> str:
        lines = [
            f"probe io: {self.target} LUN {self.lun} via {', '.join(self.portals)} ({self.stopped_by})",
            f"  duration {self.duration_s:.1f} s, block size {self.block_size}, region {self.region_blocks} "
            f"blocks at {self.region_offset_blocks}",
            f"  writes: {self.writes_attempted} attempted, {self.writes_acknowledged} acknowledged, "
            f"{self.writes_verified} verified, {self.writes_superseded} superseded, {self.writes_lost} lost",
            f"  reads: {self.reads}; io errors: {self.io_errors}; unit attentions: {self.unit_attentions}",
            f"  longest I/O pause {self.io_pause_s:.3f} s at t={self.io_pause_start_s:.3f} s; "
            f"pauses over 1 s: {self.pauses_over_1s}",
        ]
        lines += [f"  errors[{kind}] = {count}" for kind, count in sorted(self.errors_by_kind.items())]
        lines += [f"  {count} x {name}" for name, count in sorted(self.scsi_conditions.items())]
        for o in self.outages:
            back = "no relogin"
            if o.relogin_t_s is not None:
                back = f"relogin {o.relogin_t_s:.3f} s via {o.relogin_portal}"
            first = f", first I/O {o.first_io_t_s:.3f} s" if o.first_io_t_s is not None else ""
            lines.append(f"  outage: lost {o.lost_t_s:.3f} s ({o.cause} at {o.lost_portal}), {back}{first}")
        if self.fatal:
            lines.append(f"  could not run: {self.fatal}")
        elif not self.verification_complete:
            lines.append(f"  verification incomplete: {self.verification_detail}")
        return "\n".join(lines)


@dataclass
class Recorder:
    """Mutable accumulation during a run; io.py's only way to put something into the report."""

    max_errors: int = 1000
    errors: list[ErrorEvent] = field(default_factory=list)
    errors_dropped: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    conditions: collections.Counter[str] = field(default_factory=collections.Counter)
    events: list[ConnectionEvent] = field(default_factory=list)
    outages: list[OutageBuilder] = field(default_factory=list)

    def error(self, event: ErrorEvent, condition: str | None = None) -> None:
        self.by_kind[event.kind] += 1
        if condition:
            self.conditions[condition] += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(event)
        else:
            self.errors_dropped += 1

    def connection(self, event: ConnectionEvent) -> None:
        if len(self.events) < self.max_errors:
            self.events.append(event)

    def _open(self) -> OutageBuilder | None:
        return self.outages[-1] if self.outages and self.outages[-1].relogin_t_s is None else None

    def outage_started(self, t_s: float, cause: str, portal: str | None) -> None:
        self.outages.append(OutageBuilder(t_s, cause, portal))

    def login_attempted(self) -> None:
        if (outage := self._open()) is not None:
            outage.login_attempts += 1

    def relogged_in(self, t_s: float, portal: str) -> None:
        if (outage := self._open()) is not None:
            outage.relogin_t_s, outage.relogin_portal = t_s, portal

    def io_completed(self, t_s: float) -> None:
        if self.outages and self.outages[-1].relogin_t_s is not None and self.outages[-1].first_io_t_s is None:
            self.outages[-1].first_io_t_s = t_s

    def frozen_outages(self) -> tuple[Outage, ...]:
        return tuple(Outage(**dataclasses.asdict(o)) for o in self.outages)


@dataclass
class OutageBuilder:
    lost_t_s: float
    cause: str
    lost_portal: str | None
    relogin_t_s: float | None = None
    relogin_portal: str | None = None
    login_attempts: int = 0
    first_io_t_s: float | None = None
