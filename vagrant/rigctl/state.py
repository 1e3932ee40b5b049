"""The rig's persisted state (.rig/state.json): what is running, by PID, so any later `rig` call can act on it.

Written after every step of `up`, so a crashed or interrupted `up` can still be torn down completely.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .faults import Fault
from .proc import Daemon, RigError


@dataclass
class RigState:
    run_id: str
    launcher: str  # "qemu" | "vagrant"
    log_dir: str
    image_dir: str
    nodes: list[str]
    phase: str = "starting"  # starting -> up -> (down: file removed)
    started_at: float = 0.0
    up_seconds: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    daemons: dict[str, dict] = field(default_factory=dict)
    guests: dict[str, dict] = field(default_factory=dict)  # per node: jbod disks, hacontrol version
    faults: list[dict] = field(default_factory=list)
    speed: dict = field(default_factory=dict)  # speed.measure(): the factor every wait on a guest is scaled by

    def add_daemon(self, daemon: Daemon) -> None:
        self.daemons[daemon.name] = daemon.to_json()

    def daemon_objects(self) -> dict[str, Daemon]:
        return {name: Daemon(**d) for name, d in self.daemons.items()}

    def fault_objects(self) -> list[Fault]:
        return [Fault(**f) for f in self.faults]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> RigState | None:
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise RigError(f"{path} is unreadable ({exc}); `vagrant/rig down --force` cleans up by namespace") from exc


@contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """One mutating rig command at a time (only one rig may exist on a machine)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RigError(f"another rig command holds {lock_file}; cannot {what} now") from exc
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
