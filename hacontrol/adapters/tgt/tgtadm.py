"""Running ``tgtadm`` (and ``ss``) with a timeout, without ever showing a CHAP secret.

tgtadm takes account passwords on its command line, so a :class:`Command` keeps
the password as a :class:`Secret` and reveals it only while building the argv
that goes to ``subprocess``; every text made for logs and exceptions comes from
``str(command)``, which masks it. Output and error text are scrubbed of the
revealed value too, in case tgtadm ever echoes it.

tgtd's control socket is a path (``/var/run/tgtd/socket.<port>``), so tgtadm
reaches a tgtd in any network namespace; only ``ss`` has to enter the
namespace to see tgtd's TCP connections.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hacontrol.agent.protocols import AdapterError, DeadlineExceeded
from hacontrol.config.schema import Secret

TGTADM = "tgtadm"
MASK = "***"
_READ_ONLY_OPS = ("show", "stat")
# tgtadm exits 0 and prints this when tgtd died while answering (e.g. the NULL
# dereference in 1.0.85's account listing): it must count as a failure.
_DAEMON_GONE = "tgtd closed the socket"
_UNREACHABLE = ("connect to tgt daemon", "send request hdr to tgt daemon")


class TgtadmError(AdapterError):
    """tgtadm refused a command; ``message`` is tgtadm's own text (secrets masked)."""

    def __init__(self, command: Command, message: str, returncode: int):
        super().__init__(f"tgtadm {command}: {message} (exit {returncode})")
        self.command = command
        self.message = message
        self.returncode = returncode


class TgtdUnreachable(TgtadmError):
    """No tgtd answers on the control port (not started, crashed, or another port)."""


@dataclass(frozen=True)
class Command:
    """One tgtadm invocation: arguments after the control port, and an optional password."""

    args: tuple[str, ...]
    password: Secret | None = None

    @property
    def op(self) -> str:
        return _option(self.args, "--op")

    @property
    def mode(self) -> str:
        return _option(self.args, "--mode")

    @property
    def mutating(self) -> bool:
        return self.op not in _READ_ONLY_OPS

    def argv(self, control_port: int | None) -> list[str]:
        """The real argv, password included: pass it to subprocess only, never to a log or an exception."""
        port = ["-C", str(control_port)] if control_port is not None else []
        tail = ["--password", self.password.reveal()] if self.password is not None else []
        return [TGTADM, *port, "--lld", "iscsi", *self.args, *tail]

    def __str__(self) -> str:
        tail = f" --password {MASK}" if self.password is not None else ""
        return " ".join(self.args) + tail


def _option(args: Sequence[str], name: str) -> str:
    for i, arg in enumerate(args[:-1]):
        if arg == name:
            return args[i + 1]
    return ""


def remaining(deadline: float | None, cap_s: float, what: str) -> float:
    """Seconds one subprocess may take: ``cap_s``, cut to what is left before ``deadline``."""
    if deadline is None:
        return cap_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"{what}: deadline passed before it could start")
    return min(cap_s, left)


CommandHook = Callable[[Command], None]


class Tgtadm:
    """Runs tgtadm against one tgtd (one control port). Tests subclass or wrap ``run`` to count or fail."""

    def __init__(self, control_port: int | None = None, timeout_s: float = 5.0,
                 on_command: CommandHook | None = None):
        self.control_port = control_port
        self.timeout_s = timeout_s
        self.on_command = on_command
        self.mutations = 0  # mutating commands sent by this runner (a no-op apply leaves it unchanged)

    def run(self, command: Command, deadline: float | None = None) -> str:
        timeout = remaining(deadline, self.timeout_s, f"tgtadm {command}")
        if self.on_command is not None:
            self.on_command(command)
        if command.mutating:
            self.mutations += 1
        try:
            done = subprocess.run(command.argv(self.control_port), capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            # ``from None``: TimeoutExpired carries the argv, password and all.
            raise DeadlineExceeded(f"tgtadm {command}: no answer from tgtd within {timeout:.1f} s") from None
        except OSError as exc:
            raise AdapterError(f"cannot run {TGTADM}: {exc.strerror} (install the Debian package tgt)") from None
        out = _scrub(done.stdout, command)
        err = _scrub(done.stderr, command).strip().removeprefix("tgtadm: ")
        if _DAEMON_GONE in err:
            raise TgtdUnreachable(command, f"tgtd closed the connection: it probably crashed ({err})",
                                  done.returncode)
        if done.returncode != 0:
            cls = TgtdUnreachable if any(s in err for s in _UNREACHABLE) else TgtadmError
            raise cls(command, err or "failed without a message", done.returncode)
        return out


def _scrub(text: str, command: Command) -> str:
    if command.password is not None and command.password.reveal():
        return text.replace(command.password.reveal(), MASK)
    return text


def run_ss(netns: str | None, timeout_s: float, deadline: float | None = None) -> str:
    """Established TCP sockets as ``ss -Htn`` prints them, seen from inside ``netns``."""
    timeout = remaining(deadline, timeout_s, "ss")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    argv = [*prefix, "ss", "-H", "-t", "-n", "state", "established"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DeadlineExceeded(f"ss in {netns or 'this namespace'}: no answer within {timeout:.1f} s") from None
    except OSError as exc:
        raise AdapterError(f"cannot run ss: {exc.strerror} (install iproute2)") from None
    if done.returncode != 0:
        raise AdapterError(f"ss in {netns or 'this namespace'} failed: {done.stderr.strip()}")
    return done.stdout
