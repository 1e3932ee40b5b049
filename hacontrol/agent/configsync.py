"""Follow the configuration distributed through ZooKeeper (`hactl config apply`).

When ``/config`` changes, the agent validates the new text itself (an agent never runs a configuration it
cannot load), writes it over its own file atomically (keeping the previous one as ``.prev``), and applies the
target part at once (targets, LUNs, ACLs, CHAP: the next ConfigureTarget uses it). Everything else (timing,
controllers, ZooKeeper, addresses) takes effect when the agent restarts; the member report says so
(``config_restart_pending``), and ``hactl status`` shows each controller's configuration and whether it waits
for a restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from hacontrol.agent.protocols import AdapterError
from hacontrol.config import Config, ConfigError, loads

log = structlog.get_logger("hacontrol.agent")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def needs_restart(old: Config, new: Config) -> bool:
    """True when something other than the hot-applied target part changed."""
    hot = {"targets": old.targets, "discovery_chap": old.discovery_chap, "source": old.source}
    return dataclasses.replace(new, **hot) != old


@dataclass
class ConfigSync:
    path: Path | None  # the file this agent was started with (None: never written, e.g. tests)
    running: Config
    coordinator: Any
    target: Any
    sha: str = ""
    number: int = 0
    version: int | None = None
    restart_pending: bool = False
    error: str = ""
    dirty: bool = False  # the report changed since it was last published

    def tick(self, deadline: float) -> None:
        seen = getattr(self.coordinator, "config_version", None)
        if seen is None or seen == self.version:
            return
        try:
            doc, version = self.coordinator.fetch_config(deadline)
        except AdapterError as exc:
            log.warning("config_fetch_failed", error=str(exc))
            return
        self.version = version
        if doc is None:
            return
        self._adopt(doc)
        self.dirty = True

    def _adopt(self, doc: dict[str, Any]) -> None:
        text, sha, number = str(doc.get("text", "")), str(doc.get("sha256", "")), int(doc.get("number", 0))
        if sha256(text) != sha:
            self.error = f"distributed configuration #{number} is corrupt (checksum mismatch); not applied"
            log.error("config_rejected", number=number, error=self.error)
            return
        if sha == self.sha:
            self.number, self.error = number, ""
            return
        try:
            new = loads(text, source=f"ZooKeeper configuration #{number}")
        except ConfigError as exc:
            self.error = f"distributed configuration #{number} is invalid here: {exc.problems[0]}"
            log.error("config_rejected", number=number, problems=[str(p) for p in exc.problems])
            return
        if new.node_names != self.running.node_names:
            self.error = (f"distributed configuration #{number} names controllers {new.node_names}, this agent runs "
                          f"{self.running.node_names}; not applied")
            log.error("config_rejected", number=number, error=self.error)
            return
        try:
            self._write(text)
        except OSError as exc:
            self.error = f"distributed configuration #{number} could not be written to {self.path}: {exc}"
            log.error("config_rejected", number=number, error=self.error)
            return
        if hasattr(self.target, "update_config"):
            self.target.update_config(new)
        self.restart_pending = self.restart_pending or needs_restart(self.running, new)
        self.running, self.sha, self.number, self.error = new, sha, number, ""
        log.info("config_adopted", number=number, sha256=sha[:12], restart_pending=self.restart_pending)

    def _write(self, text: str) -> None:
        if self.path is None:
            return
        # A private temporary name, then one atomic rename: the file is never missing or half written, and two
        # writers of one path (a shared test directory) cannot take each other's temporary file.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        try:
            with open(tmp, "w") as f:  # on disk before the rename: a power cut must not leave an empty file
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            if self.path.exists():
                shutil.copy2(self.path, self.path.with_suffix(self.path.suffix + ".prev"))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def report(self) -> dict[str, Any]:
        return {"config_sha256": self.sha, "config_number": self.number,
                "config_restart_pending": self.restart_pending, "config_error": self.error}

    def published(self) -> None:
        self.dirty = False
