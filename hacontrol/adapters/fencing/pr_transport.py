"""How a PERSISTENT RESERVE command reaches a shared disk: SG_IO on a local device, or libiscsi.

:class:`PrTransport` sends one CDB and returns the device's answer (:class:`ScsiReply`: status, decoded sense,
data-in); it raises :class:`TransportError` when there is no answer at all (cannot open, timeout, connection
or path lost). That split is what ``require_all_disks = false`` keys on: a disk that *answered* is held to
the fencing rules, a disk that did not is reported as unreachable.

* :class:`SgIoTransport` (production): ``ioctl(SG_IO)`` on a block or sg device such as
  ``/dev/disk/by-id/...``, one process for all commands (no ``sg_persist`` fork on the takeover path), the
  kernel enforces the per-command timeout (``sg_io_hdr.timeout``). The ioctl is a constructor argument (the
  seam the unit tests use). Sense data, fixed or descriptor, is decoded by ``hacontrol.probe.sense``.
* :class:`IscsiTransport`: an iSCSI LUN through libiscsi (``hacontrol.probe.session``), addressed as
  ``iscsi://HOST[:PORT]/IQN/LUN``. Used by the host tests against tgt (this host's kernel has no iscsi_tcp);
  one session per LUN, one I_T nexus per (initiator name, session). A reconnect makes a new session and
  thus, for the target, a new I_T nexus that holds no registration: the next fencing call registers again.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hacontrol.agent.protocols import AdapterError
from hacontrol.probe.sense import Sense, parse_sense, status_name

STATUS_GOOD = 0x00
STATUS_CHECK_CONDITION = 0x02
STATUS_RESERVATION_CONFLICT = 0x18

SG_IO = 0x2285
SG_INTERFACE_ID = ord("S")
SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV = -1, -2, -3
SENSE_BUFFER_LEN = 64  # room for descriptor sense with several descriptors
DRIVER_TIMEOUT = 0x06

# Linux host bytes (include/scsi/scsi_status.h): why the command got no SCSI status.
HOST_STATUS_NAMES = {
    0x01: "DID_NO_CONNECT", 0x02: "DID_BUS_BUSY", 0x03: "DID_TIME_OUT", 0x04: "DID_BAD_TARGET",
    0x05: "DID_ABORT", 0x06: "DID_PARITY", 0x07: "DID_ERROR", 0x08: "DID_RESET", 0x09: "DID_BAD_INTR",
    0x0A: "DID_PASSTHROUGH", 0x0B: "DID_SOFT_ERROR", 0x0C: "DID_IMM_RETRY", 0x0D: "DID_REQUEUE",
    0x0E: "DID_TRANSPORT_DISRUPTED", 0x0F: "DID_TRANSPORT_FAILFAST", 0x11: "DID_NEXUS_FAILURE",
    0x12: "DID_ALLOC_FAILURE", 0x13: "DID_MEDIUM_ERROR", 0x14: "DID_TRANSPORT_MARGINAL",
}


class TransportError(AdapterError):
    """The device gave no answer: the command's outcome is unknown."""


@dataclass(frozen=True)
class ScsiReply:
    status: int
    sense: Sense | None = None
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == STATUS_GOOD

    def describe(self) -> str:
        return status_name(self.status) + (f" {self.sense.describe()}" if self.sense else "")


class PrTransport(Protocol):
    name: str  # the device path or URL, for messages

    def command(self, cdb: bytes, *, data_out: bytes | None = None, data_in_len: int = 0,
                timeout_s: float) -> ScsiReply: ...

    def close(self) -> None: ...


# --- SG_IO -----------------------------------------------------------------------------------------------


class SgIoHdr(ctypes.Structure):
    """struct sg_io_hdr (<scsi/sg.h>); x86-64 layout checked in the unit tests (88 bytes, status at 64)."""

    _fields_ = [
        ("interface_id", ctypes.c_int), ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte), ("mx_sb_len", ctypes.c_ubyte), ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint), ("dxferp", ctypes.c_void_p), ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p), ("timeout", ctypes.c_uint), ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int), ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte), ("masked_status", ctypes.c_ubyte), ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte), ("host_status", ctypes.c_ushort), ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int), ("duration", ctypes.c_uint), ("info", ctypes.c_uint),
    ]


Ioctl = Callable[[int, int, SgIoHdr], object]


def _real_ioctl(fd: int, request: int, hdr: SgIoHdr) -> object:
    return fcntl.ioctl(fd, request, hdr)  # mutate_flag defaults to True: the kernel writes back into hdr


def _open_device(path: str) -> int:
    # O_NONBLOCK: an sg node must not block in open(); SG_IO itself is synchronous either way.
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


class SgIoTransport:
    """SCSI commands through ioctl(SG_IO) on one device node; the descriptor is kept open between commands."""

    def __init__(self, path: str, ioctl: Ioctl = _real_ioctl, opener: Callable[[str], int] = _open_device):
        self.name = path
        self._ioctl = ioctl
        self._opener = opener
        self._fd: int | None = None

    def _device(self) -> int:
        if self._fd is None:
            try:
                self._fd = self._opener(self.name)
            except OSError as exc:
                raise TransportError(f"{self.name}: cannot open ({exc.strerror or exc}); check the device path "
                                     f"and that this controller sees the shared disk") from None
        return self._fd

    def command(self, cdb: bytes, *, data_out: bytes | None = None, data_in_len: int = 0,
                timeout_s: float) -> ScsiReply:
        if timeout_s <= 0:
            raise TransportError(f"{self.name}: no time left for opcode 0x{cdb[0]:02X}")
        cdb_buf = ctypes.create_string_buffer(bytes(cdb), len(cdb))
        sense_buf = ctypes.create_string_buffer(SENSE_BUFFER_LEN)
        if data_out is not None:
            data_buf, direction, length = ctypes.create_string_buffer(data_out, len(data_out)), SG_DXFER_TO_DEV, \
                len(data_out)
        elif data_in_len:
            data_buf, direction, length = ctypes.create_string_buffer(data_in_len), SG_DXFER_FROM_DEV, data_in_len
        else:
            data_buf, direction, length = None, SG_DXFER_NONE, 0
        hdr = SgIoHdr(interface_id=SG_INTERFACE_ID, dxfer_direction=direction, cmd_len=len(cdb),
                      mx_sb_len=SENSE_BUFFER_LEN, dxfer_len=length,
                      dxferp=ctypes.cast(data_buf, ctypes.c_void_p) if data_buf is not None else None,
                      cmdp=ctypes.cast(cdb_buf, ctypes.c_void_p), sbp=ctypes.cast(sense_buf, ctypes.c_void_p),
                      timeout=max(1, int(timeout_s * 1000)))
        fd = self._device()
        try:
            self._ioctl(fd, SG_IO, hdr)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO, errno.EBADF):
                self.close()  # the node went away: reopen on the next command
            raise TransportError(f"{self.name}: SG_IO failed for opcode 0x{cdb[0]:02X}: "
                                 f"{exc.strerror or exc}") from None
        received = b""
        if direction == SG_DXFER_FROM_DEV and data_buf is not None:
            received = data_buf.raw[:max(0, length - max(hdr.resid, 0))]
        return decode_sg_result(self.name, cdb[0], hdr, sense_buf.raw[:hdr.sb_len_wr], received)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass  # already gone with the device; nothing else holds it


def decode_sg_result(device: str, opcode: int, hdr: SgIoHdr, sense_raw: bytes, data: bytes) -> ScsiReply:
    """Turn what SG_IO wrote back into a reply, or a TransportError when the device never answered.

    A RESERVATION CONFLICT is an answer even though Linux also sets DID_NEXUS_FAILURE in the host byte for it.
    """
    status, host_status = hdr.status, hdr.host_status
    if status == STATUS_RESERVATION_CONFLICT:
        return ScsiReply(status)
    if host_status:
        name = HOST_STATUS_NAMES.get(host_status, f"host status 0x{host_status:02X}")
        raise TransportError(f"{device}: opcode 0x{opcode:02X} got no answer ({name}); check the path to the disk")
    if hdr.driver_status & 0x0F == DRIVER_TIMEOUT:
        raise TransportError(f"{device}: opcode 0x{opcode:02X} timed out in the kernel")
    sense = parse_sense(sense_raw) if status == STATUS_CHECK_CONDITION and sense_raw else None
    return ScsiReply(status, sense, data if status == STATUS_GOOD else b"")


# --- libiscsi --------------------------------------------------------------------------------------------

_ISCSI_URL = re.compile(r"^iscsi://(?P<host>\[[^\]]+\]|[^/:@]+)(?::(?P<port>\d+))?/(?P<iqn>[^/]+)/(?P<lun>\d+)$")


@dataclass(frozen=True)
class IscsiAddress:
    portal: str
    iqn: str
    lun: int


def parse_iscsi_url(url: str) -> IscsiAddress:
    """``iscsi://HOST[:PORT]/IQN/LUN`` (IPv6 in brackets). No credentials: they would end up in logs."""
    if "@" in url.partition("//")[2].partition("/")[0]:
        raise ValueError("an iscsi:// device must not carry credentials (they would be logged): use "
                         "iscsi://HOST[:PORT]/IQN/LUN")
    match = _ISCSI_URL.match(url)
    if match is None:
        raise ValueError(f"{url!r} is not iscsi://HOST[:PORT]/IQN/LUN")
    return IscsiAddress(f"{match['host']}:{match['port'] or 3260}", match["iqn"], int(match["lun"]))


class IscsiTransport:
    """One libiscsi session to one LUN, logged in on first use and again after a lost connection."""

    def __init__(self, url: str, initiator_name: str, login_timeout_s: float = 2.0):
        from hacontrol.probe.session import Session, Target  # libiscsi is only needed for iscsi:// devices

        self.name = url
        self.address = parse_iscsi_url(url)
        self.login_timeout_s = login_timeout_s
        self.session = Session(Target(self.address.iqn, self.address.lun, initiator_name))

    def command(self, cdb: bytes, *, data_out: bytes | None = None, data_in_len: int = 0,
                timeout_s: float) -> ScsiReply:
        from hacontrol.probe.session import ProbeError

        if timeout_s <= 0:
            raise TransportError(f"{self.name}: no time left for opcode 0x{cdb[0]:02X}")
        try:
            if not self.session.connected:
                self.session.connect(self.address.portal, min(self.login_timeout_s, timeout_s))
            result = self.session.execute(cdb, data_in_len=data_in_len, data_out=data_out, timeout_s=timeout_s)
        except ProbeError as exc:
            raise TransportError(f"{self.name}: opcode 0x{cdb[0]:02X}: {exc}") from None
        return ScsiReply(result.status, result.sense, result.data)

    def close(self) -> None:
        self.session.close(logout_timeout_s=0.5)


def open_transport(device: str, initiator_name: str, login_timeout_s: float = 2.0) -> PrTransport:
    """The transport for a configured device: ``iscsi://...`` through libiscsi, anything else is a device node."""
    if device.startswith("iscsi://"):
        return IscsiTransport(device, initiator_name, login_timeout_s)
    return SgIoTransport(device)
