"""Power fencing of a qemu guest through QMP: ``stop``, then ``quit``, then confirm the process is gone.

Why these commands: fencing must not depend on the guest. ``system_powerdown`` is an ACPI request a frozen
or hostile guest ignores, and ``system_reset`` leaves the guest running (it reboots and comes back with its
old configuration). ``stop`` pauses every vCPU before it returns (QMP is served by qemu's main loop, not by
the guest, so a hung guest cannot delay it): from then on the guest executes nothing and can issue no new
I/O. ``quit`` then ends the qemu process without a guest shutdown (pulling the plug). "Off" is confirmed
when qemu closes our monitor connection *and* nothing accepts connections on the socket any more (qemu
removes its socket on exit; a killed qemu leaves a socket nobody listens on).

A socket that cannot be reached at the start is an error, not "already off": a missing path is as likely a
wrong configuration as a stopped VM, and a fence must not be assumed. Persistent reservations, when
configured, fence the disks whatever this method reports (see ``Fencing``).

``socket_path`` is a unix socket path, or ``tcp:HOST:PORT`` for a QMP server on TCP.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import structlog

from hacontrol.agent.protocols import AdapterError

log = structlog.get_logger("hacontrol.fencing")

MAX_MESSAGES = 200  # events (STOP, SHUTDOWN ...) interleave with replies; bounded wait for ours
MAX_PROBES = 500
PROBE_INTERVAL_S = 0.02


class QmpClosed(Exception):
    """qemu closed the connection."""


class QmpFencer:
    powers_off = True

    def __init__(self, socket_path: str, timeout_s: float):
        if not socket_path:
            raise ValueError("qmp fencing needs the QMP socket (a unix path or tcp:HOST:PORT)")
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    @property
    def name(self) -> str:
        return f"qmp:{os.path.basename(self.socket_path) or self.socket_path}"

    def fence(self, node: str, epoch: int, deadline: float) -> str:
        start = time.monotonic()
        end = min(deadline, start + self.timeout_s)
        try:
            sock = self._connect(end)
        except OSError as exc:
            raise AdapterError(f"{self.name}: cannot reach the QMP socket {self.socket_path} of {node} "
                               f"({exc.strerror or exc}); check the path and that qemu runs with -qmp") from None
        stopped: float | None = None
        with sock:
            session = _Session(sock, end, self.socket_path)
            try:
                session.greeting()
                session.execute("qmp_capabilities")
                session.execute("stop")
                stopped = time.monotonic() - start
                log.info("fence_qmp_stopped", node=node, epoch=epoch, socket=self.socket_path)
                session.quit()
            except QmpClosed:
                log.warning("fence_qmp_closed_early", node=node, socket=self.socket_path)  # confirmed below
            except (OSError, ValueError) as exc:
                raise AdapterError(f"{self.name}: QMP with {node} failed: {exc} (another QMP client holding "
                                   f"the monitor also looks like this)") from None
        self._confirm_gone(node, end)
        took = time.monotonic() - start
        log.info("fence_qmp_off", node=node, epoch=epoch, seconds=round(took, 3))
        paused = f"vCPUs stopped at {stopped * 1000:.0f} ms, " if stopped is not None else ""
        return f"{node} off ({paused}qemu gone at {took * 1000:.0f} ms)"

    def _connect(self, end: float) -> socket.socket:
        remaining = max(0.01, end - time.monotonic())
        if self.socket_path.startswith("tcp:"):
            host, _, port = self.socket_path[4:].rpartition(":")
            return socket.create_connection((host.strip("[]"), int(port)), timeout=remaining)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(remaining)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock

    def _confirm_gone(self, node: str, end: float) -> None:
        """Our connection is closed; off once a new connection is refused (or the socket is gone)."""
        for _ in range(MAX_PROBES):
            try:
                probe = self._connect(end)
            except (FileNotFoundError, ConnectionRefusedError):
                return
            except OSError as exc:
                raise AdapterError(f"{self.name}: after quit, probing {self.socket_path} failed ({exc}); "
                                   f"{node} not confirmed off") from None
            probe.close()  # the listening socket is still there: qemu is still shutting down
            if time.monotonic() + PROBE_INTERVAL_S >= end:
                break
            time.sleep(PROBE_INTERVAL_S)
        raise AdapterError(f"{self.name}: qemu still accepts connections on {self.socket_path} after quit; "
                           f"{node} not confirmed off (its vCPUs are stopped)")


class _Session:
    """One QMP connection: newline-delimited JSON, replies interleaved with asynchronous events."""

    def __init__(self, sock: socket.socket, end: float, where: str):
        self.sock, self.end, self.where = sock, end, where
        self.buffer = b""

    def _message(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            remaining = self.end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer from {self.where} in time")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"no answer from {self.where} in time") from None
            except ConnectionResetError:
                raise QmpClosed() from None  # qemu exiting with our unread bytes in its buffer
            if not chunk:
                raise QmpClosed()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"unexpected QMP message {line[:100]!r}")
        return message

    def greeting(self) -> None:
        message = self._message()
        if "QMP" not in message:
            raise ValueError(f"{self.where} did not greet with QMP: {str(message)[:100]}")

    def execute(self, command: str) -> Any:
        try:
            self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            raise QmpClosed() from None
        for _ in range(MAX_MESSAGES):
            message = self._message()
            if "error" in message:
                error = message["error"]
                raise ValueError(f"{command}: {error.get('class', '?')}: {error.get('desc', '')}")
            if "return" in message:
                return message["return"]
        raise ValueError(f"{command}: no reply among {MAX_MESSAGES} messages")

    def quit(self) -> None:
        """``quit``, then read until qemu closes the connection (its reply and SHUTDOWN come first)."""
        try:
            self.execute("quit")
        except QmpClosed:
            return  # closed before the reply arrived: the quit took effect
        for _ in range(MAX_MESSAGES):
            try:
                self._message()
            except QmpClosed:
                return
        raise ValueError(f"qemu kept the QMP connection open after quit ({self.where})")
