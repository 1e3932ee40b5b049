"""Start and stop a tgtd (tgt's userspace iSCSI target) inside a network namespace, for the lab and tests.

Measured with Debian tgt 1.0.85:

* ``tgtd -f`` stays in the foreground and logs to stderr; run through
  ``ip netns exec`` (which execs), the PID we hold is tgtd's own.
* Each tgtd needs its own control port (``-C N``): its socket and lock are
  ``/var/run/tgtd/socket.N[.lock]``, a filesystem path shared by every
  namespace, so two tgtds with one port collide even in different namespaces.
* If a portal address cannot be bound (not present, and no
  ``ip_nonlocal_bind``) tgtd does not fail: it logs the error and listens on
  0.0.0.0 and :: instead. :func:`start` checks the portals and refuses that.
* tgtd ignores SIGTERM (its handler is empty), so :func:`stop` sends SIGTERM
  for form's sake and SIGKILL after a short grace. Everything tgtd holds is in
  memory; a killed tgtd leaves only its socket files, which the next one replaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IPC_DIR = Path("/var/run/tgtd")
_PROBE_TIMEOUT_S = 1.0


class TgtdError(RuntimeError):
    pass


@dataclass
class Tgtd:
    """A tgtd this process started. ``stop()`` ends it by PID."""

    pid: int
    control_port: int
    netns: str | None
    portals: tuple[str, ...]
    log_path: Path | None = None
    _process: subprocess.Popen | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, grace_s: float = 0.2, kill_timeout_s: float = 5.0) -> int | None:
        return stop(self, grace_s, kill_timeout_s)


def portal_spec(address: str, port: int = 3260) -> str:
    """``addr:port`` as tgtd wants it (IPv6 in brackets); an address that already has a port is kept."""
    if address.startswith("[") or (address.count(":") == 1):
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def control_port_free(port: int) -> bool:
    """No tgtd holds the lock for this control port (tgtd takes it with lockf at start)."""
    lock = IPC_DIR / f"socket.{port}.lock"
    if not lock.exists():
        return True
    with open(lock, "w") as fd:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.lockf(fd, fcntl.LOCK_UN)
    return True


def start(netns: str | None, control_port: int, portals: Sequence[str] = (), *, log_path: Path | None = None,
          nonlocal_bind: bool = False, ready_timeout_s: float = 5.0) -> Tgtd:
    """Start ``tgtd -f -C control_port`` in ``netns`` listening on ``portals`` ("addr" or "addr:port").

    ``nonlocal_bind`` sets net.ipv4/ipv6.ip_nonlocal_bind in that namespace, so
    portals can be bound to a VIP that is not present yet. Returns once tgtadm
    answers and tgtd listens on exactly the requested portals.
    """
    if not control_port_free(control_port):
        raise TgtdError(f"control port {control_port} is in use by another tgtd (lock {IPC_DIR}/socket."
                        f"{control_port}.lock); pick another port")
    specs = tuple(portal_spec(p) for p in portals)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    if nonlocal_bind:
        if not netns:
            raise TgtdError("nonlocal_bind changes a sysctl: only inside a lab namespace, never the root one")
        subprocess.run([*prefix, "sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1",
                        "net.ipv6.ip_nonlocal_bind=1"], check=True, capture_output=True, timeout=10)
    argv = [*prefix, "tgtd", "-f", "-C", str(control_port)]
    if specs:
        argv += ["--iscsi", ",".join(f"portal={s}" for s in specs)]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    tgtd = Tgtd(process.pid, control_port, netns, specs, log_path, process)
    try:
        _wait_ready(tgtd, ready_timeout_s)
    except BaseException:
        stop(tgtd)
        raise
    return tgtd


def _wait_ready(tgtd: Tgtd, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.02) + 1):  # bounded in count and in time
        if not tgtd.alive():
            raise TgtdError(f"tgtd exited at start (code {tgtd._process.returncode if tgtd._process else '?'})"
                            f"{_log_tail(tgtd)}")
        listening = _portals(tgtd.control_port)
        if listening is not None:
            want = {_normalize(s) for s in tgtd.portals}
            if want and listening != want:
                raise TgtdError(f"tgtd listens on {sorted(listening)} instead of {sorted(want)}: it could not bind "
                                f"a portal and fell back to every address (is the address present? pass "
                                f"nonlocal_bind=True for a VIP that comes later){_log_tail(tgtd)}")
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    raise TgtdError(f"tgtd did not answer on control port {tgtd.control_port} within {timeout_s} s{_log_tail(tgtd)}")


def _portals(control_port: int) -> set[str] | None:
    """What tgtd listens on ("addr:port"), or None while it does not answer."""
    try:
        done = subprocess.run(["tgtadm", "-C", str(control_port), "--lld", "iscsi", "--mode", "portal", "--op",
                               "show"], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    return {_normalize(line.split(": ", 1)[1].rsplit(",", 1)[0]) for line in done.stdout.splitlines()
            if line.startswith("Portal: ")}


def _normalize(spec: str) -> str:
    return spec.replace("[", "").replace("]", "")


def _log_tail(tgtd: Tgtd, lines: int = 5) -> str:
    if tgtd.log_path is None or not tgtd.log_path.exists():
        return ""
    tail = tgtd.log_path.read_text(errors="replace").splitlines()[-lines:]
    return "; tgtd log: " + " | ".join(tail) if tail else ""


def stop(tgtd: Tgtd, grace_s: float = 0.2, kill_timeout_s: float = 5.0) -> int | None:
    """End our tgtd by PID: SIGTERM, then SIGKILL after ``grace_s``. Returns its exit status (None if unknown)."""
    process = tgtd._process
    if process is None:
        raise TgtdError("this Tgtd was not started here; refusing to signal a PID we do not own")
    if process.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_timeout_s)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(tgtd.pid, sig)
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            raise TgtdError(f"tgtd pid {tgtd.pid} survived SIGKILL for {kill_timeout_s} s")
    _remove_ipc_files(tgtd.control_port)
    return process.returncode


def _remove_ipc_files(port: int) -> None:
    """Our dead tgtd's control socket and lock; kept if another tgtd holds the lock meanwhile."""
    if control_port_free(port):
        for name in (f"socket.{port}", f"socket.{port}.lock"):
            with contextlib.suppress(FileNotFoundError):
                (IPC_DIR / name).unlink()


@contextlib.contextmanager
def running(netns: str | None, control_port: int, portals: Sequence[str] = (), **kwargs) -> Iterator[Tgtd]:
    tgtd = start(netns, control_port, portals, **kwargs)
    try:
        yield tgtd
    finally:
        stop(tgtd)
