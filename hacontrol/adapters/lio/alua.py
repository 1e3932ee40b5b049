"""ALUA state switches and reads, by direct configfs writes (the measured fast path; docs/lio.md).

Every hacontrol storage object is in one LIO **LU group** (``names.LU_GROUP``). LIO applies an implicit
transition written to one member's target port group to the group with the same id on every member of its
LU group, so switching 1,024 LUNs is one write per ALUA group (own, peer), not 2,048. The kernel sets the
group Transitioning at once, queues ASYMMETRIC ACCESS STATE CHANGED for the sessions of that group's ports,
and completes the transition in a work item; :meth:`AluaControl.switch` waits (bounded) until the sampled
members report the new state.

``per_device=True`` writes each storage object's group instead (the fallback when some object is not in the
LU group, and the comparison in ``tests/bench/bench_lio_alua.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hacontrol.agent.protocols import AdapterError, DeadlineExceeded
from hacontrol.core.model import AluaState

from .snapshot import CONFIGFS, read_text

TRANSITIONING = int(AluaState.TRANSITIONING)
_POLL_S = 0.002
_MAX_POLLS = 5000  # bounds the wait loop whatever the clock does (5000 x 2 ms = 10 s)


class AluaControl:
    """Reads and switches the states of two ALUA groups (``own``, ``peer``) across a set of storage objects.

    ``paths`` are the storage objects' configfs directories (``core/iblock_N/hac-x``); the first one is the
    representative that per-tick reads look at.
    """

    def __init__(self, root: str | Path = CONFIGFS, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.root = Path(root)
        self.clock = clock
        self.sleep = sleep

    def state(self, so_path: Path, group: str) -> AluaState | None:
        value = read_text(so_path / "alua" / group / "alua_access_state")
        try:
            return AluaState(int(value))
        except ValueError:
            return None

    def switch(self, paths: Sequence[Path], changes: Sequence[tuple[str, AluaState]], deadline: float,
               per_device: bool = False) -> int:
        """Apply ``(group, state)`` changes in order; returns the number of configfs writes."""
        if not paths:
            return 0
        writes = 0
        for group, state in changes:
            targets = paths if per_device else paths[:1]
            for so_path in targets:
                try:
                    with open(so_path / "alua" / group / "alua_access_state", "w") as f:
                        f.write(str(int(state)))
                except OSError as exc:
                    raise AdapterError(f"setting ALUA group {group} to {state.label} on {so_path.name}: "
                                       f"{exc.strerror}") from None
                writes += 1
        self.wait(paths, changes, deadline)
        return writes

    def wait(self, paths: Sequence[Path], changes: Sequence[tuple[str, AluaState]], deadline: float) -> None:
        """Until the first and last storage objects report every requested state (the LU group switches all)."""
        sample = [paths[0], paths[-1]] if len(paths) > 1 else [paths[0]]
        for _ in range(_MAX_POLLS):
            pending = [(p.name, g, s) for p in sample for g, s in changes if self.state(p, g) != s]
            if not pending:
                return
            if self.clock() >= deadline:
                name, group, state = pending[0]
                raise DeadlineExceeded(f"ALUA group {group} of {name} did not reach {state.label} by the deadline "
                                       f"({len(pending)} sampled group(s) pending)")
            self.sleep(_POLL_S)
        raise DeadlineExceeded("ALUA transition did not complete")
