"""Run planned units through a writer, with a deadline checked at unit boundaries and rollback on failure.

A call is one transaction: when a step fails, every step this call applied is undone in reverse order (the
undo ops the planner attached), and the error says what was rolled back and what could not be restored.
When the deadline passes, the call stops *between* units (each leaves LIO consistent) and returns the units
still to do; the caller continues them on its next call. At least one unit runs per call, so a large
convergence always progresses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from hacontrol.adapters.targets import rollback_summary
from hacontrol.agent.protocols import AdapterError

from .plan import Op, Step, Unit

log = structlog.get_logger("hacontrol.lio")


class Writer(Protocol):
    def run(self, op: Op) -> None: ...


class ApplyFailed(AdapterError):
    """A step failed; what this call applied was rolled back (the message says how far that went)."""


@dataclass(frozen=True)
class ApplyResult:
    steps: int  # steps applied by this call
    units: int  # units completed by this call
    remaining: tuple[Unit, ...]  # units left for the next call (deadline reached)
    duration_s: float
    op_seconds: dict[str, tuple[int, float]] = field(default_factory=dict)  # op kind -> (count, seconds)

    @property
    def complete(self) -> bool:
        return not self.remaining


def apply_units(writer: Writer, units: Sequence[Unit], deadline: float | None,
                clock: Callable[[], float] = time.monotonic, logger: Any = None) -> ApplyResult:
    logger = logger or log
    started = clock()
    done: list[Step] = []
    per_op: dict[str, tuple[int, float]] = {}
    for index, unit in enumerate(units):
        if index > 0 and deadline is not None and clock() >= deadline:
            return ApplyResult(len(done), index, tuple(units[index:]), clock() - started, per_op)
        for number, step in enumerate(unit.steps):
            op_started = time.perf_counter()
            try:
                writer.run(step.do)
            except AdapterError as exc:
                logger.error("lio_step_failed", unit=unit.name, step=str(step), error=str(exc))
                outcome = rollback(writer, done, logger)
                raise ApplyFailed(f"LIO apply failed in {unit.name!r} at step {number + 1}/{len(unit.steps)} "
                                  f"({step}): {exc}; {outcome}") from None
            count, seconds = per_op.get(step.do.kind, (0, 0.0))
            per_op[step.do.kind] = (count + 1, seconds + time.perf_counter() - op_started)
            done.append(step)
        logger.debug("lio_unit", unit=unit.name, steps=len(unit.steps))
    return ApplyResult(len(done), len(units), (), clock() - started, per_op)


def rollback(writer: Writer, done: Sequence[Step], logger: Any = None) -> str:
    """Undo ``done`` in reverse. Keeps going past a failed undo: a half-restored LIO is better than none."""
    logger = logger or log
    failures: list[str] = []
    notes = [f"{step}: {step.note}" for step in reversed(done) if step.note]
    for step in reversed(done):
        for op in step.undo:
            try:
                writer.run(op)
            except AdapterError as exc:
                failures.append(f"{op}: {exc}")
    logger.warning("lio_rollback", steps=len(done), failures=len(failures))
    return rollback_summary(len(done), notes, failures)
