"""Slow reads off the agent's tick: full LIO snapshots (drift checks, cache refresh) and capacity.

A full snapshot of 1,024 LUNs takes seconds on a small controller, and observe() runs ten times a second on a
controller whose lease allows one second without confirmation: such reads must never sit in a tick. One
worker thread runs one job at a time; results are picked up by the next observe(). Each snapshot job carries
the adapter's *generation* at its start, and a result older than the last change the adapter made is
discarded (it may show a half-applied state).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("hacontrol.lio")


@dataclass(frozen=True)
class Result:
    kind: str  # snapshot | capacity
    generation: int
    value: Any = None
    error: str = ""


class Worker:
    """Runs ``job()`` in a daemon thread when idle; ``take()`` returns finished results (oldest first)."""

    def __init__(self, start_thread: bool = True):
        self._lock = threading.Lock()
        self._busy: str | None = None
        self._results: list[Result] = []
        self._start_thread = start_thread  # False: run inline (tests)

    @property
    def busy(self) -> str | None:
        with self._lock:
            return self._busy

    def submit(self, kind: str, generation: int, job: Callable[[], Any]) -> bool:
        """Start ``job`` unless another is running; returns whether it started."""
        with self._lock:
            if self._busy is not None:
                return False
            self._busy = kind
        if self._start_thread:
            threading.Thread(target=self._run, args=(kind, generation, job), name=f"lio-{kind}",
                             daemon=True).start()
        else:
            self._run(kind, generation, job)
        return True

    def _run(self, kind: str, generation: int, job: Callable[[], Any]) -> None:
        try:
            result = Result(kind, generation, job())
        except Exception as exc:  # a read failure is reported by the next observe, never raised in a thread
            log.warning("lio_background_failed", job=kind, error=f"{type(exc).__name__}: {exc}")
            result = Result(kind, generation, error=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._results.append(result)
            self._busy = None

    def take(self) -> list[Result]:
        with self._lock:
            out, self._results = self._results, []
        return out
