"""``hactl probe vaai``: what ESXi's ``esxcli storage core device vaai status get`` would report for each LUN.

ESXi decides the VAAI primitives from the same SCSI data read here (T10 standard VAAI, no vendor plugin):

* **ATS** (Atomic Test & Set): COMPARE AND WRITE (0x89) supported and a non-zero MAXIMUM COMPARE AND WRITE
  LENGTH in the Block Limits page (VPD 0xB0);
* **Clone** (XCOPY): the 3PC bit in standard INQUIRY and EXTENDED COPY (LID1, 0x83/0x00) supported;
* **Zero**: WRITE SAME (16) (0x93) supported;
* **Delete** (UNMAP): LBPME in READ CAPACITY (16), LBPU in the Logical Block Provisioning page (VPD 0xB2),
  and non-zero MAXIMUM UNMAP LBA / BLOCK DESCRIPTOR COUNT in VPD 0xB0;
* **Thin Provisioning Status: yes** when LBPME is set.

Plus what the failover depends on: TPGS (implicit/explicit ALUA), REPORT TARGET PORT GROUPS, and the
identity (NAA from VPD 0x83, unit serial from VPD 0x80, relative target port and port group of the path).
Opcode support comes from REPORT SUPPORTED OPCODES (one opcode per command); the parsers below are pure and
unit-tested on bytes captured from LIO (tests/unit/test_probe_vaai.py).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

ALUA_STATES = {0: "active/optimized", 1: "active/non-optimized", 2: "standby", 3: "unavailable",
               4: "lba-dependent", 14: "offline", 15: "transitioning"}
TPGS_NAMES = {0: "none", 1: "implicit", 2: "explicit", 3: "implicit and explicit"}
# (opcode, service action or None, label) asked with REPORT SUPPORTED OPCODES.
OPCODES = ((0x89, None, "COMPARE AND WRITE"), (0x83, 0x00, "EXTENDED COPY (LID1)"),
           (0x84, 0x03, "RECEIVE COPY OPERATING PARAMETERS"), (0x93, None, "WRITE SAME (16)"),
           (0x41, None, "WRITE SAME (10)"), (0x42, None, "UNMAP"))


class Executor(Protocol):
    """What the probe needs from a session: ``hacontrol.probe.session.Session`` fits."""

    def execute(self, cdb: bytes, *, data_in_len: int = 0, data_out: bytes | None = None,
                timeout_s: float = 5.0) -> Any: ...


# --- parsers (pure) --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StandardInquiry:
    peripheral_type: int
    vendor: str
    product: str
    revision: str
    tpgs: int
    three_pc: bool


def parse_inquiry(data: bytes) -> StandardInquiry:
    if len(data) < 36:
        raise ValueError(f"standard INQUIRY returned {len(data)} bytes, expected at least 36")
    text = lambda a, b: data[a:b].decode("ascii", errors="replace").strip()  # noqa: E731
    return StandardInquiry(data[0] & 0x1F, text(8, 16), text(16, 32), text(32, 36), (data[5] >> 4) & 0x3,
                           bool(data[5] & 0x08))


def parse_supported_pages(data: bytes) -> list[int]:
    length = struct.unpack_from(">H", data, 2)[0] if len(data) >= 4 else 0
    return list(data[4:4 + length])


def parse_serial(data: bytes) -> str:
    length = struct.unpack_from(">H", data, 2)[0] if len(data) >= 4 else 0
    return data[4:4 + length].decode("ascii", errors="replace").strip("\x00 ")


@dataclass(frozen=True)
class Identity:
    naa: str = ""
    t10: str = ""
    relative_port: int | None = None
    port_group: int | None = None
    target_port: str = ""  # SCSI name string of the target port ("iqn...,t,0x0001")


def parse_device_identification(data: bytes) -> Identity:
    """VPD 0x83 designators: NAA (type 3), T10 vendor id (1), relative port (4), port group (5), names (8)."""
    fields: dict[str, Any] = {}
    length = struct.unpack_from(">H", data, 2)[0] if len(data) >= 4 else 0
    off, end = 4, min(len(data), 4 + length)
    for _ in range(256):  # bounded: a page holds far fewer designators
        if off + 4 > end:
            break
        code_set, kind, dlen = data[off] & 0x0F, data[off + 1], data[off + 3]
        association, dtype = (kind >> 4) & 0x3, kind & 0x0F
        body = data[off + 4:off + 4 + dlen]
        if dtype == 3 and association == 0:
            fields["naa"] = "naa." + body.hex()
        elif dtype == 1 and association == 0:
            fields["t10"] = body.decode("ascii", errors="replace").strip("\x00 ")
        elif dtype == 4 and len(body) >= 4:
            fields["relative_port"] = struct.unpack_from(">H", body, 2)[0]
        elif dtype == 5 and len(body) >= 4:
            fields["port_group"] = struct.unpack_from(">H", body, 2)[0]
        elif dtype == 8 and association == 1 and code_set == 3:
            fields["target_port"] = body.decode("utf-8", errors="replace").strip("\x00")
        off += 4 + dlen
    return Identity(**fields)


@dataclass(frozen=True)
class BlockLimits:
    max_compare_and_write: int = 0  # blocks
    max_unmap_lba_count: int = 0
    max_unmap_descriptors: int = 0
    unmap_granularity: int = 0  # blocks
    max_write_same: int = 0  # blocks


def parse_block_limits(data: bytes) -> BlockLimits:
    if len(data) < 44:
        return BlockLimits(max_compare_and_write=data[5] if len(data) > 5 else 0)
    lba, desc, gran = struct.unpack_from(">III", data, 20)
    return BlockLimits(data[5], lba, desc, gran, struct.unpack_from(">Q", data, 36)[0])


@dataclass(frozen=True)
class Provisioning:
    lbpu: bool = False
    lbpws: bool = False
    lbpws10: bool = False
    lbprz: int = 0
    provisioning_type: int = 0  # 0 full, 1 resource, 2 thin


def parse_lbp(data: bytes) -> Provisioning:
    if len(data) < 7:
        return Provisioning()
    b = data[5]
    return Provisioning(bool(b & 0x80), bool(b & 0x40), bool(b & 0x20), (b >> 2) & 0x7, data[6] & 0x7)


@dataclass(frozen=True)
class Capacity16:
    last_lba: int
    block_size: int
    lbpme: bool
    lbprz: bool


def parse_capacity16(data: bytes) -> Capacity16:
    if len(data) < 15:
        raise ValueError(f"READ CAPACITY (16) returned {len(data)} bytes, expected at least 15")
    last_lba, block_size = struct.unpack_from(">QI", data)
    return Capacity16(last_lba, block_size, bool(data[14] & 0x80), bool(data[14] & 0x40))


@dataclass(frozen=True)
class PortGroup:
    id: int
    state: int
    supported: int
    ports: tuple[int, ...]

    @property
    def state_name(self) -> str:
        return ALUA_STATES.get(self.state, f"state {self.state}")


def parse_rtpg(data: bytes) -> tuple[list[PortGroup], int | None, bool]:
    """(groups, implicit transition time or None, truncated). LIO returns the extended format 4 bytes short
    (it reports the length of the plain format): a descriptor cut off is marked, never invented."""
    if len(data) < 4:
        return [], None, False
    extended = len(data) >= 8 and (data[4] & 0x70) == 0x10
    off = 8 if extended else 4
    end = 4 + struct.unpack_from(">I", data)[0] + (4 if extended else 0)
    groups, truncated = [], False
    for _ in range(1024):
        if off + 8 > min(end, len(data)):
            break
        count = data[off + 7]
        ports = []
        for i in range(count):
            at = off + 8 + 4 * i
            if at + 4 > len(data):
                truncated = True
                break
            ports.append(struct.unpack_from(">H", data, at + 2)[0])
        groups.append(PortGroup(struct.unpack_from(">H", data, off + 2)[0], data[off] & 0x0F, data[off + 1],
                                tuple(ports)))
        off += 8 + 4 * count
    return groups, (data[5] if extended else None), truncated or len(data) < end


def parse_rsoc_one(data: bytes) -> bool:
    """REPORT SUPPORTED OPCODES, one command format: SUPPORT field 3 (standard) or 5 (vendor) = supported."""
    return len(data) >= 2 and (data[1] & 0x07) in (3, 5)


def parse_report_luns(data: bytes) -> list[int]:
    length = struct.unpack_from(">I", data)[0] if len(data) >= 4 else 0
    out = []
    for off in range(8, min(len(data), 8 + length), 8):
        out.append(struct.unpack_from(">H", data, off)[0] & 0x3FFF)
    return out


# --- CDBs -------------------------------------------------------------------------------------------------------

def cdb_inquiry(page: int | None = None, alloc: int = 1024) -> bytes:
    return struct.pack(">BBBHB", 0x12, 0 if page is None else 1, page or 0, alloc, 0)


def cdb_read_capacity16(alloc: int = 32) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x10, 0, alloc, 0, 0)


def cdb_rtpg(alloc: int = 4096, extended: bool = True) -> bytes:
    return struct.pack(">BBIIBB", 0xA3, 0x0A | (0x20 if extended else 0), 0, alloc, 0, 0)


def cdb_rsoc(opcode: int, service_action: int | None, alloc: int = 512) -> bytes:
    option = 1 if service_action is None else 2
    return struct.pack(">BBBBHIBB", 0xA3, 0x0C, option, opcode, service_action or 0, alloc, 0, 0)


def cdb_report_luns(alloc: int = 16384) -> bytes:
    return struct.pack(">BBBBBBIBB", 0xA0, 0, 0, 0, 0, 0, alloc, 0, 0)


# --- the verdict ------------------------------------------------------------------------------------------------

@dataclass
class VaaiReport:
    lun: int
    vendor: str = ""
    product: str = ""
    revision: str = ""
    naa: str = ""
    serial: str = ""
    relative_port: int | None = None
    port_group: int | None = None
    tpgs: str = "none"
    alua_groups: list[dict[str, Any]] = field(default_factory=list)
    implicit_transition_s: int | None = None
    rtpg_truncated: bool = False
    opcodes: dict[str, bool] = field(default_factory=dict)
    block_limits: dict[str, int] = field(default_factory=dict)
    lbp: dict[str, Any] = field(default_factory=dict)
    thin_provisioning: bool = False
    ats: bool = False
    clone: bool = False
    zero: bool = False
    delete: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(r: VaaiReport, three_pc: bool, limits: BlockLimits, lbp: Provisioning, lbpme: bool) -> None:
    op = r.opcodes
    r.ats = op.get("COMPARE AND WRITE", False) and limits.max_compare_and_write > 0
    r.clone = three_pc and op.get("EXTENDED COPY (LID1)", False)
    r.zero = op.get("WRITE SAME (16)", False)
    r.delete = (lbpme and lbp.lbpu and op.get("UNMAP", False) and limits.max_unmap_lba_count > 0
                and limits.max_unmap_descriptors > 0)
    r.thin_provisioning = lbpme


def status(flag: bool) -> str:
    return "supported" if flag else "unsupported"


def render(reports: list[VaaiReport]) -> str:
    lines = []
    for r in reports:
        lines.append(f"LUN {r.lun}  {r.naa or '(no NAA)'}  {r.vendor} {r.product} {r.revision}  serial {r.serial}")
        lines += [f"   ATS Status: {status(r.ats)}", f"   Clone Status: {status(r.clone)}",
                  f"   Zero Status: {status(r.zero)}", f"   Delete Status: {status(r.delete)}",
                  f"   Thin Provisioning Status: {'yes' if r.thin_provisioning else 'no'}"]
        groups = ", ".join(f"{g['id']} {g['state']} ports {g['ports'] or '?'}" for g in r.alua_groups) or "-"
        if r.rtpg_truncated:
            groups += " (the target cut its answer short: a port id is missing)"
        lines.append(f"   ALUA: TPGS {r.tpgs}; this path: relative port {r.relative_port}, group {r.port_group}; "
                     f"groups: {groups}"
                     + (f"; implicit transition {r.implicit_transition_s} s" if r.implicit_transition_s else ""))
        lines += [f"   error: {e}" for e in r.errors]
    return "\n".join(lines)


def probe_lun(session: Executor, lun: int) -> VaaiReport:
    """Read everything from one LUN through ``session`` (already logged in to that LUN)."""
    r = VaaiReport(lun)

    def data(cdb: bytes, alloc: int, what: str) -> bytes:
        res = session.execute(cdb, data_in_len=alloc)
        for _ in range(3):  # a fresh session (or an ALUA change) first reports UNIT ATTENTION: ask again
            if res.ok or res.sense is None or not res.sense.is_unit_attention():
                break
            res = session.execute(cdb, data_in_len=alloc)
        if not res.ok:
            r.errors.append(f"{what}: {res.describe()}")
            return b""
        return res.data

    std = parse_inquiry(data(cdb_inquiry(None, 96), 96, "INQUIRY") or bytes(36))
    r.vendor, r.product, r.revision, r.tpgs = std.vendor, std.product, std.revision, TPGS_NAMES[std.tpgs]
    pages = parse_supported_pages(data(cdb_inquiry(0x00), 1024, "VPD 0x00"))
    r.serial = parse_serial(data(cdb_inquiry(0x80), 1024, "VPD 0x80")) if 0x80 in pages else ""
    ident = parse_device_identification(data(cdb_inquiry(0x83), 1024, "VPD 0x83"))
    r.naa, r.relative_port, r.port_group = ident.naa, ident.relative_port, ident.port_group
    limits = parse_block_limits(data(cdb_inquiry(0xB0), 1024, "VPD 0xB0")) if 0xB0 in pages else BlockLimits()
    lbp = parse_lbp(data(cdb_inquiry(0xB2), 1024, "VPD 0xB2")) if 0xB2 in pages else Provisioning()
    cap_data = data(cdb_read_capacity16(), 32, "READ CAPACITY (16)")
    lbpme = parse_capacity16(cap_data).lbpme if cap_data else False
    r.block_limits, r.lbp = asdict(limits), {**asdict(lbp), "lbpme": lbpme}
    for opcode, sa, label in OPCODES:
        r.opcodes[label] = parse_rsoc_one(data(cdb_rsoc(opcode, sa), 512, f"REPORT SUPPORTED OPCODES {label}"))
    if std.tpgs:
        groups, r.implicit_transition_s, r.rtpg_truncated = parse_rtpg(data(cdb_rtpg(), 4096, "RTPG"))
        r.alua_groups = [{"id": g.id, "state": g.state_name, "ports": list(g.ports)} for g in groups]
    verdict(r, std.three_pc, limits, lbp, lbpme)
    return r
