"""A minimal QMP client: enough to pause, resume, query and power off a qemu process we started.

The QMP socket is a unix socket under .rig/, so the driver reaches it from the root namespace without
entering the rig's network namespace.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .proc import RigError


class Qmp:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Open a session, negotiate capabilities, run one command, return its 'return' value."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                raise RigError(f"QMP socket {self.path}: {exc}") from exc
            reader = sock.makefile("r")
            _read_reply(reader)  # greeting
            _send(sock, {"execute": "qmp_capabilities"})
            _read_reply(reader)
            message: dict[str, Any] = {"execute": command}
            if arguments:
                message["arguments"] = arguments
            _send(sock, message)
            try:
                return _read_reply(reader)
            except RigError:
                if command == "quit":  # qemu may close the socket before it answers
                    return None
                raise

    def status(self) -> str:
        """'running', 'paused', ... as qemu reports it (query-status)."""
        return str(self.execute("query-status")["status"])


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _read_reply(reader) -> Any:
    # Asynchronous events (STOP, RESUME, ...) may arrive before the answer: skip them.
    for _ in range(100):
        line = reader.readline()
        if not line:
            raise RigError("QMP connection closed")
        msg = json.loads(line)
        if "QMP" in msg:
            return msg
        if "return" in msg:
            return msg["return"]
        if "error" in msg:
            raise RigError(f"QMP error: {msg['error']}")
    raise RigError("QMP: no answer among 100 messages")
