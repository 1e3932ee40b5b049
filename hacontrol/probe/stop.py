"""Ending a probe run early: a stop file, SIGTERM/SIGINT, or a call from the lab.

The first request ends the I/O phase and the verification pass still runs (a lab stopping the probe wants
the verdict). A second request also cuts verification short; the report then says it is incomplete.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType


class StopControl:
    def __init__(self, stop_file: Path | None = None) -> None:
        self.stop_file = stop_file
        self.reason: str | None = None
        self.aborted = False

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        else:
            self.aborted = True

    def requested(self) -> str | None:
        """The reason the run should end, checking the stop file too (one stat per call)."""
        if self.reason is None and self.stop_file is not None and self.stop_file.exists():
            self.reason = "stop_file"
        return self.reason


@contextlib.contextmanager
def stop_on_signals(stop: StopControl,
                    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[StopControl]:
    """Route the signals to ``stop`` for the duration of the block, then restore the previous handlers."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        # Only sets flags: the engine polls them between commands, never mid-command.
        stop.request(f"signal:{signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
