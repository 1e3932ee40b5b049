"""One iSCSI session through libiscsi, with a deadline on every login and every command.

Why the async API: libiscsi's ``*_sync`` calls spin in ``poll(fd, 1000 ms)`` until the command's callback
fires, with no way out. ``iscsi_set_timeout`` only has whole seconds and only takes effect inside
``iscsi_service``, and with auto-reconnect on (the default) a dead connection makes the sync call reconnect
behind our back, forever (``reconnect_max_retries`` = -1), hiding exactly the event the probe measures. So this
module turns auto-reconnect off, queues each command with ``iscsi_scsi_command_async`` and runs the poll loop
itself until the callback fires or the caller's deadline passes. On a timeout or a dead connection it destroys
the context (libiscsi then completes every outstanding task as CANCELLED, after which the tasks are freed):
the caller decides where and when to log in again.

Secrets: CHAP secrets only ever go to ``iscsi_set_*_username_pwd``; every libiscsi error string is passed
through :meth:`Credentials.redact` before it reaches an exception, and libiscsi's own logging (which prints
login parameters at level >= 3) is left at level 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import re
import select
import struct
import time
from dataclasses import dataclass, field

from hacontrol.probe import libiscsi as li
from hacontrol.probe.sense import Sense, condition, parse_sense, status_name

DEFAULT_COMMAND_TIMEOUT_S = 5.0
_POLL_SLICE_S = 0.2  # the longest single poll(): bounds how late a deadline can be noticed
_LOGIN_STATUS = re.compile(r"Status: (?P<name>[^(]+)\((?P<code>\d+)\)")
_CLOSED = "connection closed by the target"


@dataclass(frozen=True)
class Credentials:
    """CHAP (and optionally mutual CHAP) credentials. The secrets never appear in repr()."""

    user: str
    secret: str = field(repr=False)
    mutual_user: str | None = None
    mutual_secret: str | None = field(default=None, repr=False)

    @property
    def mode(self) -> str:
        return "mutual" if self.mutual_user else "one-way"

    def redact(self, text: str) -> str:
        for secret in (self.secret, self.mutual_secret):
            if secret:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class Target:
    """Where to log in, apart from the portal (which the caller picks per login)."""

    iqn: str
    lun: int
    initiator_name: str
    credentials: Credentials | None = None
    isid: int | None = None  # the initiator port's ISID (OUI format: the top two bits 0); None: libiscsi's random

    def __post_init__(self) -> None:
        if self.isid is not None and not 0 <= self.isid < 1 << 46:
            raise ValueError(f"isid {self.isid:#x}: only the OUI format (6 bytes, the top two bits 0) can be set")

    def redact(self, text: str) -> str:
        return self.credentials.redact(text) if self.credentials else text


class ProbeError(Exception):
    """A transport-level failure: the command's outcome is unknown, the session is closed."""

    kind = "error"


class CommandTimeout(ProbeError):
    kind = "timeout"


class ConnectionLost(ProbeError):
    kind = "connection_lost"


class LoginFailed(ProbeError):
    """TCP connect or iSCSI login failed. ``login_status`` is the target's status class/detail, e.g. 0x0201."""

    kind = "login_failed"

    def __init__(self, message: str, login_status: int | None = None, timed_out: bool = False) -> None:
        super().__init__(message)
        self.login_status = login_status
        self.timed_out = timed_out

    @property
    def configuration_error(self) -> bool:
        """Retrying cannot help: status class 2 (authentication, authorization, target not found ...), or the
        target failed *our* check in mutual CHAP (libiscsi reports that without a status code)."""
        if self.login_status is not None:
            return self.login_status >> 8 == 0x02
        return any(word in str(self) for word in ("CHAP", "Authentication"))


@dataclass(frozen=True)
class ScsiResult:
    status: int
    sense: Sense | None = None
    data: bytes = b""
    sense_raw: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == li.SCSI_STATUS_GOOD

    @property
    def status_name(self) -> str:
        return status_name(self.status)

    def describe(self) -> str:
        return condition(self.status, self.sense)


@dataclass(frozen=True)
class Capacity:
    last_lba: int
    block_size: int

    @property
    def blocks(self) -> int:
        return self.last_lba + 1


class _Expired(Exception):
    pass


def parse_capacity16(data: bytes) -> Capacity:
    if len(data) < 12:
        raise ValueError(f"READ CAPACITY (16) returned {len(data)} bytes, expected at least 12")
    last_lba, block_size = struct.unpack_from(">QI", data)
    return Capacity(last_lba, block_size)


def cdb_read16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)


def cdb_write16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, 0, lba, blocks, 0, 0)


def cdb_inquiry(evpd: bool = False, page: int = 0, alloc_len: int = 255) -> bytes:
    return struct.pack(">BBBHB", 0x12, 1 if evpd else 0, page, alloc_len, 0)


def cdb_read_capacity16(alloc_len: int = 32) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x10, 0, alloc_len, 0, 0)


def cdb_test_unit_ready() -> bytes:
    return bytes(6)


class Session:
    """An iSCSI session to one LUN. Not thread-safe; one command at a time.

    ``connect`` logs in (closing any previous connection first), the command methods raise
    :class:`CommandTimeout` / :class:`ConnectionLost` after which :attr:`connected` is False, and SCSI
    outcomes (CHECK CONDITION, RESERVATION CONFLICT ...) come back as a :class:`ScsiResult`, never raised.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.portal: str | None = None
        self._lib = li.load()
        self._ctx: int | None = None
        self._cb = li.COMMAND_CB(self._on_complete)  # one thunk for the session's life: libiscsi keeps it
        self._tokens = itertools.count(1)
        self._done: dict[int, tuple[int, str]] = {}  # token -> (libiscsi status, error text)
        self._inflight: dict[int, tuple[object, ...]] = {}  # token -> (task, buffers kept alive)

    @property
    def connected(self) -> bool:
        return self._ctx is not None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A context outliving its callback thunk would call freed memory: never let that happen.
        if getattr(self, "_ctx", None) is not None:
            self._abandon()

    def _on_complete(self, ctx: int, status: int, _command_data: int, private: int | None) -> None:
        # Runs inside iscsi_service(); only records, so no Python exception can cross the C frame. The error
        # text is taken now: libiscsi overwrites it on the way out (a refused connect ends up reported as
        # "Can not reconnect right now").
        if private:
            message = b"" if status == li.SCSI_STATUS_GOOD else (self._lib.iscsi_get_error(ctx) or b"")
            self._done[private] = (status, self.target.redact(message.decode(errors="replace").strip()))

    # -- connection ---------------------------------------------------------------------------------------

    def connect(self, portal: str, timeout_s: float) -> None:
        """TCP connect + iSCSI login to ``portal`` (``host:port``) within ``timeout_s``; raises LoginFailed."""
        self.close(logout_timeout_s=0.5)
        deadline = time.monotonic() + timeout_s
        self._ctx = self._new_context()
        self.portal = portal
        try:
            token = self._token()
            if self._lib.iscsi_connect_async(self._ctx, portal.encode(), self._cb, token) != 0:
                raise LoginFailed(f"connect to {portal}: {self._error()}")
            self._login_step(token, deadline, f"connect to {portal}")
            token = self._token()
            if self._lib.iscsi_login_async(self._ctx, self._cb, token) != 0:
                raise LoginFailed(f"login at {portal}: {self._error()}")
            self._login_step(token, deadline, f"login at {portal}")
        except BaseException:
            self._abandon()
            raise

    def _new_context(self) -> int:
        lib, t = self._lib, self.target
        ctx = lib.iscsi_create_context(t.initiator_name.encode())
        if not ctx:
            raise LoginFailed("iscsi_create_context failed (bad initiator name?)")
        ok = lib.iscsi_set_targetname(ctx, t.iqn.encode()) == 0
        ok = ok and lib.iscsi_set_session_type(ctx, li.ISCSI_SESSION_NORMAL) == 0
        ok = ok and lib.iscsi_set_header_digest(ctx, li.ISCSI_HEADER_DIGEST_NONE) == 0
        lib.iscsi_set_noautoreconnect(ctx, 1)  # we reconnect ourselves, and record it
        if t.isid is not None:  # the same initiator port on every login: the same I_T nexus for reservations
            lib.iscsi_set_isid_oui(ctx, t.isid >> 24, t.isid & 0xFFFFFF)
        creds = t.credentials
        if ok and creds is not None:
            ok = lib.iscsi_set_initiator_username_pwd(ctx, creds.user.encode(), creds.secret.encode()) == 0
            if ok and creds.mutual_user is not None:
                ok = lib.iscsi_set_target_username_pwd(
                    ctx, creds.mutual_user.encode(), (creds.mutual_secret or "").encode()) == 0
        if not ok:
            message = t.redact((lib.iscsi_get_error(ctx) or b"").decode(errors="replace"))
            lib.iscsi_destroy_context(ctx)
            raise LoginFailed(f"invalid session parameters: {message}")
        return ctx

    def _login_step(self, token: int, deadline: float, what: str) -> None:
        try:
            status, message = self._wait(token, deadline)
        except _Expired:
            raise LoginFailed(f"{what}: no answer within the login timeout", timed_out=True) from None
        except ConnectionLost as exc:
            raise LoginFailed(f"{what}: {exc}") from None
        if status == li.SCSI_STATUS_REDIRECT:
            # A target that moved answers with a redirect; the probe reports it rather than following it, so
            # the portal list the lab gave stays the only place it logs in to.
            where = (self._lib.iscsi_get_target_address(self._ctx) or b"?").decode(errors="replace")
            raise LoginFailed(f"{what}: target redirected the login to {where} (not followed)")
        if status != li.SCSI_STATUS_GOOD:
            message = message or _CLOSED
            match = _LOGIN_STATUS.search(message)
            raise LoginFailed(f"{what}: {message}", int(match["code"]) if match else None)

    def close(self, logout_timeout_s: float = 1.0) -> None:
        """Log out (best effort, bounded) and drop the connection. Safe to call at any time."""
        if self._ctx is None:
            return
        if self._lib.iscsi_is_logged_in(self._ctx) and logout_timeout_s > 0:
            token = self._token()
            if self._lib.iscsi_logout_async(self._ctx, self._cb, token) == 0:
                # If the target is gone, dropping the connection is all that is left to do.
                with contextlib.suppress(_Expired, ConnectionLost):
                    self._wait(token, time.monotonic() + logout_timeout_s)
        self._abandon()

    def _abandon(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            # Completes every queued or in-flight task with SCSI_STATUS_CANCELLED (callback), then frees the
            # context; only after that may the tasks and their buffers go.
            self._lib.iscsi_destroy_context(ctx)
        for entry in self._inflight.values():
            self._lib.scsi_free_scsi_task(entry[0])
        self._inflight.clear()
        self._done.clear()

    # -- commands -----------------------------------------------------------------------------------------

    def execute(self, cdb: bytes, *, data_in_len: int = 0, data_out: bytes | None = None,
                timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> ScsiResult:
        """Send any CDB; returns status, decoded sense and data-in. Raises CommandTimeout / ConnectionLost."""
        if self._ctx is None:
            raise ConnectionLost("not logged in")
        if data_in_len and data_out is not None:
            raise ValueError("bidirectional commands are not supported")
        deadline = time.monotonic() + timeout_s
        task, token = self._queue(cdb, data_in_len, data_out)
        try:
            status, message = self._wait(token, deadline)
        except _Expired:
            self._abandon()
            raise CommandTimeout(f"no response within {timeout_s:g} s (opcode 0x{cdb[0]:02X})") from None
        except ConnectionLost:
            self._abandon()
            raise
        result = self._collect(task.contents, status)
        self._inflight.pop(token)
        self._lib.scsi_free_scsi_task(task)
        if status in (li.SCSI_STATUS_CANCELLED, li.SCSI_STATUS_ERROR, li.SCSI_STATUS_TIMEOUT):
            self._abandon()
            raise ConnectionLost(message or _CLOSED)
        return result

    def _queue(self, cdb: bytes, data_in_len: int, data_out: bytes | None) -> tuple[ctypes._Pointer, int]:
        assert self._ctx is not None
        cdb_buf = (ctypes.c_ubyte * len(cdb)).from_buffer_copy(cdb)
        if data_out is not None:
            direction, length = li.SCSI_XFER_WRITE, len(data_out)
        else:
            direction, length = (li.SCSI_XFER_READ if data_in_len else li.SCSI_XFER_NONE), data_in_len
        task = self._lib.scsi_create_task(len(cdb), cdb_buf, direction, length)
        if not task:
            raise MemoryError("scsi_create_task failed")
        token = self._token()
        out_buf = out = None
        if data_out is not None:
            out_buf = (ctypes.c_ubyte * len(data_out)).from_buffer_copy(data_out)
            out = li.IscsiData(len(data_out), ctypes.cast(out_buf, ctypes.POINTER(ctypes.c_ubyte)))
        # The data-out buffer must live until the task completes or the context is destroyed.
        self._inflight[token] = (task, out_buf, out)
        data_arg = ctypes.byref(out) if out is not None else None
        if self._lib.iscsi_scsi_command_async(self._ctx, self.target.lun, task, self._cb, data_arg, token) != 0:
            message = self._error()
            self._abandon()
            raise ConnectionLost(f"cannot queue command: {message}")
        return task, token

    def _collect(self, task: li.ScsiTask, status: int) -> ScsiResult:
        data = b""
        if task.datain.size > 0 and task.datain.data:
            data = ctypes.string_at(task.datain.data, task.datain.size)
        if status != li.SCSI_STATUS_CHECK_CONDITION:
            return ScsiResult(status, None, data if status == li.SCSI_STATUS_GOOD else b"")
        # On CHECK CONDITION libiscsi stores the sense segment in datain: 2-byte length, then the sense data,
        # and has already parsed it into task->sense.
        length = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
        raw = data[2:2 + length]
        parsed = task.sense
        if parsed.error_type & 0x7F in (0x70, 0x71, 0x72, 0x73):
            sense = Sense(parsed.key, parsed.ascq >> 8, parsed.ascq & 0xFF,
                          deferred=parsed.error_type & 0x7F in (0x71, 0x73))
        else:
            sense = parse_sense(raw)
        return ScsiResult(status, sense, b"", raw)

    def read16(self, lba: int, blocks: int, block_size: int,
               timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> ScsiResult:
        return self.execute(cdb_read16(lba, blocks), data_in_len=blocks * block_size, timeout_s=timeout_s)

    def write16(self, lba: int, data: bytes, block_size: int,
                timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> ScsiResult:
        if len(data) % block_size:
            raise ValueError(f"write of {len(data)} bytes is not a multiple of the block size {block_size}")
        return self.execute(cdb_write16(lba, len(data) // block_size), data_out=data, timeout_s=timeout_s)

    def test_unit_ready(self, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> ScsiResult:
        return self.execute(cdb_test_unit_ready(), timeout_s=timeout_s)

    def inquiry(self, evpd: bool = False, page: int = 0, alloc_len: int = 255,
                timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> ScsiResult:
        return self.execute(cdb_inquiry(evpd, page, alloc_len), data_in_len=alloc_len, timeout_s=timeout_s)

    def read_capacity16(self, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> ScsiResult:
        return self.execute(cdb_read_capacity16(), data_in_len=32, timeout_s=timeout_s)

    # -- event loop ---------------------------------------------------------------------------------------

    def _token(self) -> int:
        return next(self._tokens)

    def _error(self) -> str:
        if self._ctx is None:
            return ""
        raw = self._lib.iscsi_get_error(self._ctx) or b""
        return self.target.redact(raw.decode(errors="replace").strip())

    def _fresh(self, message: str, before: str) -> str:
        # libiscsi sets no error text when the target closes the connection in an orderly way, so whatever
        # text is left over (an earlier UNIT ATTENTION, say) would be reported as the cause; and during a login
        # it reports only "Can not reconnect right now". Both mean: the connection was closed.
        if message == before or "Can not reconnect right now" in message:
            return ""
        return message

    def _wait(self, token: int, deadline: float) -> tuple[int, str]:
        """Service the connection until ``token``'s callback fired; _Expired at the deadline.

        Returns libiscsi's status and the error text set while waiting ("" if none)."""
        lib = self._lib
        before = self._error()
        # The deadline ends the loop; the count only guards against a clock that stops (>= 10 us per round).
        max_rounds = math.ceil(max(deadline - time.monotonic(), 0) * 100_000) + 1000
        for _ in range(max_rounds):
            if token in self._done:
                status, message = self._done.pop(token)
                return status, self._fresh(message, before)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._ctx is None:
                break
            fd, events = lib.iscsi_get_fd(self._ctx), lib.iscsi_which_events(self._ctx)
            if fd < 0:
                raise ConnectionLost(self._fresh(self._error(), before) or _CLOSED)
            revents = 0
            if events:
                poller = select.poll()
                poller.register(fd, events)
                ready = poller.poll(max(1, math.ceil(min(remaining, _POLL_SLICE_S) * 1000)))
                revents = ready[0][1] if ready else 0
            else:
                time.sleep(min(remaining, 0.1))  # iscsi.h: nothing to poll for, come back later
            if revents & select.POLLNVAL:
                raise ConnectionLost(_CLOSED)
            if lib.iscsi_service(self._ctx, revents) < 0 and token not in self._done:
                raise ConnectionLost(self._fresh(self._error(), before) or _CLOSED)
        if token in self._done:
            status, message = self._done.pop(token)
            return status, self._fresh(message, before)
        raise _Expired
