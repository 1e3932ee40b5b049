"""Running commands and daemons: every call bounded in time, every daemon remembered by PID.

A daemon is recorded as (pid, start time from /proc/PID/stat) so that `down` never signals a recycled PID
that now belongs to someone else's process.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


class RigError(RuntimeError):
    """Something the rig needs did not happen; the message says what and where to look."""


class EventLog:
    """One JSON line per event in <logdir>/rig.jsonl, a short line on stderr for people."""

    def __init__(self, path: Path | None = None, quiet: bool = False) -> None:
        self.path = path
        self.quiet = quiet
        self._t0 = time.monotonic()

    def __call__(self, event: str, **fields: object) -> None:
        record = {"t": round(time.time(), 3), "event": event, **fields}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        if not self.quiet:
            detail = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("stdout", "stderr"))
            detail = " ".join(detail.split())  # multi-line scripts on one line
            print(f"[rig {time.monotonic() - self._t0:7.1f}s] {event} {detail}"[:400], file=sys.stderr, flush=True)


NULL_LOG = EventLog(None, quiet=True)


def in_netns(namespace: str | None, cmd: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *cmd] if namespace else list(cmd)


def run(cmd: Sequence[str], *, timeout: float, check: bool = True, netns: str | None = None,
        input_text: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None,
        log: EventLog = NULL_LOG) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (or its timeout), capturing text output."""
    full = in_netns(netns, cmd)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input_text,
                              env=env, cwd=cwd, check=False)
    except subprocess.TimeoutExpired as exc:
        log("cmd.timeout", cmd=shlex.join(full), timeout=timeout)
        raise RigError(f"timed out after {timeout:.0f}s: {shlex.join(full)}") from exc
    log("cmd", cmd=_abridged(shlex.join(full)), rc=proc.returncode, s=round(time.monotonic() - t0, 2))
    if check and proc.returncode != 0:
        raise RigError(f"exit {proc.returncode}: {shlex.join(full)}\n{proc.stderr.strip()[-2000:]}")
    return proc


def _abridged(text: str, limit: int = 400) -> str:
    # Keep both ends: the program and the remote command of a long ssh line are what a reader looks for.
    return text if len(text) <= limit else f"{text[:120]} ... {text[-(limit - 125):]}"


@dataclass(frozen=True)
class Daemon:
    name: str
    pid: int
    start_ticks: int  # field 22 of /proc/PID/stat: tells a recycled PID from ours

    def alive(self) -> bool:
        return process_start_ticks(self.pid) == self.start_ticks

    def to_json(self) -> dict:
        return asdict(self)


def process_start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; everything after the last ')' is well-formed.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is as good as dead
        return None
    return int(fields[19])


def daemon_from_pid(name: str, pid: int) -> Daemon:
    ticks = process_start_ticks(pid)
    if ticks is None:
        raise RigError(f"{name} (pid {pid}) exited right after starting; see its log")
    return Daemon(name, pid, ticks)


def spawn(name: str, cmd: Sequence[str], *, log_file: Path, netns: str | None = None,
          env: dict[str, str] | None = None, log: EventLog = NULL_LOG) -> Daemon:
    """Start a long-running process in its own session, output appended to log_file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full = in_netns(netns, cmd)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    log("spawn", name=name, pid=proc.pid, cmd=shlex.join(full)[:300])
    # `ip netns exec` execs the command, so proc.pid is the daemon itself.
    return daemon_from_pid(name, proc.pid)


def read_pidfile(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RigError(f"no pid file at {path} after {timeout:.0f}s")


def stop(daemon: Daemon, *, timeout: float = 10.0, log: EventLog = NULL_LOG) -> None:
    """SIGTERM, wait (bounded), then SIGKILL — only if the PID is still the process we started."""
    if not daemon.alive():
        return
    _signal(daemon, signal.SIGTERM)
    if _wait_gone(daemon, timeout):
        log("stopped", name=daemon.name, pid=daemon.pid)
        return
    _signal(daemon, signal.SIGKILL)
    _wait_gone(daemon, 5.0)
    log("killed", name=daemon.name, pid=daemon.pid)


def _signal(daemon: Daemon, sig: int) -> None:
    try:
        os.kill(daemon.pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(daemon: Daemon, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(daemon.pid)
        if not daemon.alive():
            return True
        time.sleep(0.1)
    return not daemon.alive()


def _reap(pid: int) -> None:
    # Our own children would linger as zombies (and look alive to kill(0)) until waited for.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_until(what: str, predicate, *, timeout: float, interval: float = 0.5) -> float:
    """Poll predicate() until true; returns the seconds it took or raises RigError naming `what`."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return time.monotonic() - t0
        except Exception as exc:  # the predicate probes something not up yet
            last_exc = exc
        time.sleep(interval)
    raise RigError(f"{what}: not true after {timeout:.0f}s" + (f" (last error: {last_exc})" if last_exc else ""))
