"""What this agent is doing, in a small JSON file on this controller: ``hactl status`` reads it when ZooKeeper
cannot be reached (an outage is exactly when an operator asks), so it can still say who serves and why.

The file is ``<cluster.runtime_dir>/status-<node>.json`` (default ``/run/hacontrol``: tmpfs, gone at boot),
written atomically (a temporary file renamed over it) when the summary changes, and at least once a second so
its age shows whether the agent still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("hacontrol.agent")

REFRESH_S = 1.0


def path_for(directory: str, node: str) -> Path:
    return Path(directory) / f"status-{node}.json"


class LocalStatus:
    def __init__(self, directory: str, node: str, link_report: Callable[[], dict[str, Any]] | None = None,
                 wall: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic):
        self.path = path_for(directory, node)
        self.node = node
        self.link_report = link_report
        self.wall = wall
        self.clock = clock
        self._last: dict[str, Any] | None = None
        self._written_at = float("-inf")
        self._warned = False

    def on_tick(self, report: Any) -> None:
        obs, plan = report.observation, report.plan
        c, d = obs.coord, obs.datapath
        summary = {
            "node": self.node,
            "role": plan.role.value,
            "reason": plan.reason.value,
            "session": c.session.value,
            "epoch": c.epoch,
            "leader": None if c.leader is None else {"node": c.leader.node, "epoch": c.leader.epoch},
            "own_alua": None if d.own_group is None else d.own_group.label,
            "vips": sorted(d.vips),
            "serving": d.serving,
            "blockers": [b.value for b in plan.blockers],
        }
        now = self.clock()
        if summary == self._last and now - self._written_at < REFRESH_S:
            return
        doc = {**summary, "at": self.wall(), "pid": os.getpid()}
        if self.link_report is not None:
            doc["peer_link"] = self.link_report()
        self._write(doc)
        self._last, self._written_at = summary, now

    def _write(self, doc: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc, sort_keys=True))
            tmp.replace(self.path)
            self._warned = False
        except OSError as exc:  # status for operators; never a reason to stop the loop
            if not self._warned:
                log.warning("local_status_not_written", path=str(self.path), error=exc.strerror)
                self._warned = True
            with contextlib.suppress(OSError):
                tmp.unlink()


def read(directory: str, node: str) -> dict[str, Any] | None:
    try:
        return json.loads(path_for(directory, node).read_text())
    except (OSError, ValueError):
        return None
