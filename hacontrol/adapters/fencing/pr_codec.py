"""SCSI-3 persistent reservations as bytes (SPC-4 6.15 / 6.16): keys, CDBs, parameter data. Pure: no I/O.

Consumers: ``scsi_pr`` (the fencing logic) and ``pr_transport`` (which sends what is built here). Every
encoding is checked against hand-computed bytes in tests/unit/test_fencing_pr_codec.py.

The reservation key carries the fencing token: ``node_id << 32 | epoch``. The node id (1-65535, from the
configuration) says *who* registered, the epoch (the ZooKeeper takeover counter, < 2^32) says *under which
leadership*; a key is thus comparable with ZooKeeper's leader znode, and a key from an older epoch is stale by
construction. Key 0 is never produced (SPC-4 gives it the meaning "unregister").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

NODE_ID_MAX = 0xFFFF
EPOCH_MAX = 0xFFFFFFFF
PR_OUT_PARAMETER_LENGTH = 24  # the basic parameter list: no TransportIDs (SPEC_I_PT = 0)


class PrIn(IntEnum):
    """PERSISTENT RESERVE IN service actions."""

    READ_KEYS = 0x00
    READ_RESERVATION = 0x01
    REPORT_CAPABILITIES = 0x02
    READ_FULL_STATUS = 0x03


class PrOut(IntEnum):
    """PERSISTENT RESERVE OUT service actions."""

    REGISTER = 0x00
    RESERVE = 0x01
    RELEASE = 0x02
    CLEAR = 0x03
    PREEMPT = 0x04
    PREEMPT_AND_ABORT = 0x05
    REGISTER_AND_IGNORE = 0x06


class PrType(IntEnum):
    """Persistent reservation types (the TYPE field)."""

    WRITE_EXCLUSIVE = 0x1
    EXCLUSIVE_ACCESS = 0x3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 0x6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 0x7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x8

    @property
    def all_registrants(self) -> bool:
        """Every registrant holds the reservation; READ RESERVATION then reports key 0 (SPC-4 6.15.3.3)."""
        return self in (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)


# --- keys ------------------------------------------------------------------------------------------------


def pr_key(node_id: int, epoch: int) -> int:
    """The reservation key of ``node_id`` under ``epoch``; ValueError outside the encodable range."""
    if not 1 <= node_id <= NODE_ID_MAX:
        raise ValueError(f"node id {node_id} is outside 1-{NODE_ID_MAX} (it is the high half of the PR key)")
    if not 0 <= epoch <= EPOCH_MAX:
        raise ValueError(f"epoch {epoch} does not fit the low 32 bits of the PR key")
    return node_id << 32 | epoch


def key_parts(key: int) -> tuple[int, int]:
    """(node id, epoch) of a key; a key with bits above the node id field is not ours: node id 0 for it."""
    node_id, epoch = key >> 32, key & EPOCH_MAX
    return (node_id if 1 <= node_id <= NODE_ID_MAX else 0), epoch


def describe_key(key: int) -> str:
    node_id, epoch = key_parts(key)
    return f"0x{key:016x} (node {node_id}, epoch {epoch})" if node_id else f"0x{key:016x} (foreign)"


# --- CDBs ------------------------------------------------------------------------------------------------


def cdb_pr_in(action: PrIn, alloc_len: int) -> bytes:
    """PERSISTENT RESERVE IN (5Eh), 10 bytes: service action, ALLOCATION LENGTH in bytes 7-8."""
    if not 0 <= alloc_len <= 0xFFFF:
        raise ValueError(f"allocation length {alloc_len} does not fit 16 bits")
    return struct.pack(">BB5xHB", 0x5E, action & 0x1F, alloc_len, 0)


def cdb_pr_out(action: PrOut, pr_type: int = 0, length: int = PR_OUT_PARAMETER_LENGTH) -> bytes:
    """PERSISTENT RESERVE OUT (5Fh), 10 bytes: service action, SCOPE (0 = LU) | TYPE, PARAMETER LIST LENGTH."""
    return struct.pack(">BBB2xIB", 0x5F, action & 0x1F, pr_type & 0x0F, length, 0)


def pr_out_parameters(key: int = 0, sa_key: int = 0, aptpl: bool = False) -> bytes:
    """The 24-byte basic parameter list: RESERVATION KEY, SERVICE ACTION RESERVATION KEY, flags (APTPL bit 0)."""
    return struct.pack(">QQ4xBxH", key, sa_key, 0x01 if aptpl else 0x00, 0)


@dataclass(frozen=True)
class PrOutCommand:
    """One PERSISTENT RESERVE OUT: the CDB and its data-out, plus a name for messages."""

    name: str
    cdb: bytes
    data: bytes


def register_and_ignore(new_key: int) -> PrOutCommand:
    """Register ``new_key`` whatever this I_T nexus had before (the RESERVATION KEY field is ignored)."""
    return PrOutCommand("REGISTER AND IGNORE EXISTING KEY", cdb_pr_out(PrOut.REGISTER_AND_IGNORE),
                        pr_out_parameters(0, new_key))


def register(current_key: int, new_key: int) -> PrOutCommand:
    """REGISTER: replace ``current_key`` (0 if none) by ``new_key`` (0 unregisters)."""
    return PrOutCommand("REGISTER", cdb_pr_out(PrOut.REGISTER), pr_out_parameters(current_key, new_key))


def reserve(key: int, pr_type: int) -> PrOutCommand:
    return PrOutCommand("RESERVE", cdb_pr_out(PrOut.RESERVE, pr_type), pr_out_parameters(key))


def release(key: int, pr_type: int) -> PrOutCommand:
    """RELEASE needs the type of the reservation being released (a mismatch is ILLEGAL REQUEST)."""
    return PrOutCommand("RELEASE", cdb_pr_out(PrOut.RELEASE, pr_type), pr_out_parameters(key))


def clear(key: int) -> PrOutCommand:
    """CLEAR: remove every registration and the reservation (the issuing nexus must be registered with ``key``)."""
    return PrOutCommand("CLEAR", cdb_pr_out(PrOut.CLEAR), pr_out_parameters(key))


def preempt(key: int, victim: int, pr_type: int, abort: bool) -> PrOutCommand:
    """PREEMPT (AND ABORT) the registrations of ``victim``; if it held the reservation, ours replaces it."""
    action = PrOut.PREEMPT_AND_ABORT if abort else PrOut.PREEMPT
    name = "PREEMPT AND ABORT" if abort else "PREEMPT"
    return PrOutCommand(name, cdb_pr_out(action, pr_type), pr_out_parameters(key, victim))


# --- PR IN data ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    generation: int
    keys: tuple[int, ...]  # one entry per registered I_T nexus: a key may repeat


@dataclass(frozen=True)
class Reservation:
    generation: int
    key: int | None  # None: no persistent reservation
    pr_type: int | None
    scope: int = 0


def _header(data: bytes, what: str) -> tuple[int, int]:
    if len(data) < 8:
        raise ValueError(f"{what}: {len(data)} bytes of parameter data, the header alone is 8")
    generation, additional = struct.unpack_from(">II", data)
    return generation, additional


def parse_read_keys(data: bytes) -> Keys:
    """READ KEYS: PRGENERATION, ADDITIONAL LENGTH, then 8-byte keys. Refuses a truncated list.

    A list longer than the allocation length comes back truncated with the full ADDITIONAL LENGTH; the
    caller's allocation (8 KiB: 1023 keys) is far beyond two controllers, so truncation is an error here.
    """
    generation, additional = _header(data, "READ KEYS")
    if additional % 8:
        raise ValueError(f"READ KEYS: additional length {additional} is not a multiple of 8")
    if len(data) < 8 + additional:
        raise ValueError(f"READ KEYS: {additional // 8} keys announced, {(len(data) - 8) // 8} returned")
    keys = struct.unpack_from(f">{additional // 8}Q", data, 8)
    return Keys(generation, tuple(keys))


def parse_read_reservation(data: bytes) -> Reservation:
    """READ RESERVATION: header, then (if ADDITIONAL LENGTH is 16) the key and SCOPE | TYPE at byte 21."""
    generation, additional = _header(data, "READ RESERVATION")
    if additional == 0:
        return Reservation(generation, None, None)
    if additional < 16 or len(data) < 24:
        raise ValueError(f"READ RESERVATION: additional length {additional} with {len(data)} bytes returned")
    key = struct.unpack_from(">Q", data, 8)[0]
    scope_type = data[21]
    return Reservation(generation, key, scope_type & 0x0F, scope_type >> 4)


@dataclass(frozen=True)
class FullStatus:
    """One registration as READ FULL STATUS reports it (SPC-4 6.16.4.5): the key, the I_T nexus (the target
    port's relative id and the initiator's TransportID), and whether it holds the reservation."""

    key: int
    holder: bool
    all_target_ports: bool
    scope: int
    pr_type: int  # meaningful only for the holder
    rtpi: int
    initiator: str  # the iSCSI name; the TransportID of another protocol as hex
    isid: str  # hex, "" for a TransportID without one


def parse_transport_id(tid: bytes) -> tuple[str, str]:
    """An iSCSI TransportID (protocol 5): format 00b is the name alone, 01b the name, ",i,0x" and the ISID
    (SPC-4 7.6.4.6); both NUL-terminated and padded. Any other protocol comes back as hex, no ISID."""
    if len(tid) < 4 or tid[0] & 0x0F != 5:
        return tid.hex(), ""
    length = struct.unpack_from(">H", tid, 2)[0]
    text = tid[4:4 + length].split(b"\0", 1)[0].decode("utf-8", "replace")
    name, sep, isid = text.partition(",i,0x")
    return (name, isid.lower()) if sep else (text, "")


def parse_read_full_status(data: bytes) -> tuple[int, tuple[FullStatus, ...]]:
    """READ FULL STATUS: header, then one descriptor per registered I_T nexus (24 bytes + TransportID)."""
    generation, additional = _header(data, "READ FULL STATUS")
    if len(data) < 8 + additional:
        raise ValueError(f"READ FULL STATUS: {additional} bytes announced, {len(data) - 8} returned")
    out, at, end = [], 8, 8 + additional
    while at < end:
        if end - at < 24:
            raise ValueError(f"READ FULL STATUS: a descriptor cut short at byte {at}")
        key = struct.unpack_from(">Q", data, at)[0]
        flags, scope_type = data[at + 12], data[at + 13]
        rtpi = struct.unpack_from(">H", data, at + 18)[0]
        tid_len = struct.unpack_from(">I", data, at + 20)[0]
        if at + 24 + tid_len > end:
            raise ValueError(f"READ FULL STATUS: a TransportID of {tid_len} bytes runs past the data")
        name, isid = parse_transport_id(data[at + 24:at + 24 + tid_len])
        out.append(FullStatus(key, bool(flags & 0x01), bool(flags & 0x02), scope_type >> 4, scope_type & 0x0F, rtpi,
                              name, isid))
        at += 24 + tid_len
    return generation, tuple(out)
