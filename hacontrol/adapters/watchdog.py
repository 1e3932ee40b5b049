"""Watchdogs: the kernel's /dev/watchdog for the lease, systemd's for the agent's liveness.

The lease watchdog (:class:`DeviceWatchdog`) is armed only while this
controller acts as active, and kicked only right after a lease confirmation
(``decide`` emits KickWatchdog only then). If the agent freezes, crashes or
cannot step down, the kernel resets the machine ``session_timeout_s -
watchdog_margin_s`` after the last kick: before the peer can take over.
Closing the device with the magic character 'V' disarms it (unless the
driver was loaded with nowayout); closing it any other way (a crash) leaves it
running, which is the point.

Where no hardware watchdog exists, :class:`NullWatchdog` keeps the interface;
what then protects the node is power fencing by the peer and persistent
reservations on the disks (docs/operations.md, "Nodes without a watchdog").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
from pathlib import Path

import structlog

from hacontrol.agent.protocols import AdapterError

log = structlog.get_logger("hacontrol.watchdog")

WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707


def device_timeout_s(session_timeout_s: float, margin_s: float) -> int:
    """Whole seconds for WDIOC_SETTIMEOUT, never longer than the session allows.

    Refused (ValueError) when the slack is negative: a watchdog that fires after
    the peer may already have taken over protects nothing.
    """
    seconds = int(session_timeout_s - margin_s)  # floor: firing early is safe, late is not
    if seconds < 1:
        raise ValueError(f"session_timeout_s - watchdog_margin_s = {session_timeout_s - margin_s:.2f} s; a hardware "
                         "watchdog counts whole seconds (at least 1): raise session_timeout_s or lower the margin")
    return seconds


class DeviceWatchdog:
    """/dev/watchdog (or /dev/watchdogN)."""

    def __init__(self, path: str, timeout_s: int):
        self.path = path
        self.timeout_s = timeout_s
        self._fd: int | None = None

    @property
    def armed(self) -> bool:
        return self._fd is not None or self._running_in_kernel()

    def _running_in_kernel(self) -> bool:
        """Another incarnation of the agent may have left the timer running (it crashed)."""
        name = Path(self.path).name
        sysfs = Path("/sys/class/watchdog") / (name if name != "watchdog" else "watchdog0") / "state"
        try:
            return sysfs.read_text().strip() == "active"
        except OSError:
            return False

    def arm(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError as exc:
            raise AdapterError(f"cannot open watchdog {self.path}: {exc.strerror}") from exc
        try:
            buf = struct.pack("I", self.timeout_s)
            got = struct.unpack("I", fcntl.ioctl(fd, WDIOC_SETTIMEOUT, buf))[0]
            if got > self.timeout_s:
                raise AdapterError(f"watchdog {self.path} accepted {got} s instead of {self.timeout_s} s")
        except OSError as exc:
            os.write(fd, b"V")
            os.close(fd)
            raise AdapterError(f"cannot set the timeout of {self.path}: {exc.strerror}") from exc
        except AdapterError:
            os.write(fd, b"V")
            os.close(fd)
            raise
        self._fd = fd
        log.info("watchdog_armed", device=self.path, timeout_s=self.timeout_s)

    def kick(self) -> None:
        if self._fd is None:
            self.arm()
            return
        try:
            fcntl.ioctl(self._fd, WDIOC_KEEPALIVE, struct.pack("I", 0))
        except OSError as exc:
            raise AdapterError(f"watchdog keepalive failed: {exc.strerror}") from exc

    def disarm(self) -> None:
        fd = self._fd
        if fd is None:
            if self._running_in_kernel():
                # Left running by a crashed agent: open it and close it cleanly to stop it.
                with contextlib.suppress(OSError):
                    fd = os.open(self.path, os.O_WRONLY)
            if fd is None:
                return
        with contextlib.suppress(OSError):
            os.write(fd, b"V")
        os.close(fd)
        self._fd = None
        log.info("watchdog_disarmed", device=self.path)


class NullWatchdog:
    """No hardware watchdog: records the intent so status can show it, protects nothing by itself."""

    def __init__(self) -> None:
        self._armed = False

    @property
    def armed(self) -> bool:
        return self._armed

    def arm(self) -> None:
        self._armed = True

    def kick(self) -> None:
        self._armed = True

    def disarm(self) -> None:
        self._armed = False


class SystemdNotifier:
    """sd_notify without libsystemd: READY=1, WATCHDOG=1 and STATUS= to $NOTIFY_SOCKET."""

    def __init__(self, socket_path: str | None = None):
        self.path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() else None
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return bool(self.path)

    def notify(self, message: str) -> None:
        if not self.path:
            return
        address = "\0" + self.path[1:] if self.path.startswith("@") else self.path
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), address)

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")
        self.ready_sent = True

    def alive(self, status: str) -> None:
        """Each tick: kick systemd's watchdog and say what we do; before READY=1, only the status (the unit's
        watchdog starts with READY, and a kick before it would claim a liveness nobody asked for yet)."""
        self.notify(f"WATCHDOG=1\nSTATUS={status}" if self.ready_sent else f"STATUS={status}")

    def kick(self) -> None:
        """Kick systemd's watchdog mid-tick (a long fence), once READY=1 went out."""
        if self.ready_sent:
            self.notify("WATCHDOG=1")

    def stopping(self, takes_s: float | None = None) -> None:
        """Say we are stopping; with ``takes_s``, also stretch systemd's watchdog to cover a hand-over that long.

        systemd keeps enforcing WatchdogSec while a service stops: without this, a hand-over that waits for the
        peer longer than WatchdogSec ends in SIGABRT, possibly before the hardware watchdog is disarmed.
        """
        message = "STOPPING=1"
        if takes_s is not None and self.watchdog_s is not None:
            message += f"\nWATCHDOG=1\nWATCHDOG_USEC={int(max(takes_s, self.watchdog_s) * 1_000_000)}"
        self.notify(message)
