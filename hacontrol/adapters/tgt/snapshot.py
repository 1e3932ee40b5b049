"""What one tgtd holds, parsed from ``tgtadm --op show`` into frozen dataclasses.

Formats are those of tgt 1.0.85 (``usr/target.c``: ``tgt_target_show_all``,
``system_show``, ``account_show``; ``usr/iscsi/target.c``: connections and
portals); captured outputs live in ``tests/unit/fixtures/tgt``. tgtadm never
shows CHAP secrets, vendor/product ids or mode pages: see ``plan`` for how the
adapter copes with what it cannot see.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

CONTROLLER_LUN = 0  # tgt creates LUN 0 (type "controller") with every target and refuses to delete it


@dataclass(frozen=True)
class TgtLun:
    lun: int
    type: str  # "disk", "controller", ...
    scsi_id: str
    scsi_sn: str
    path: str | None  # backing store path, None for the controller LUN
    bs_type: str = "rdwr"
    bs_flags: str = ""
    thin: bool = False
    online: bool = True
    readonly: bool = False
    size: str = ""
    block_size: int = 512


@dataclass(frozen=True)
class TgtNexus:
    """An I_T nexus (iSCSI session) and its connections' initiator addresses."""

    itn_id: int
    initiator: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class TgtTargetState:
    tid: int
    iqn: str
    state: str = "ready"
    luns: tuple[TgtLun, ...] = ()
    incoming: tuple[str, ...] = ()  # bound incoming CHAP users, in tgt's internal (array) order
    outgoing: str | None = None  # the mutual-CHAP account
    acl: tuple[str, ...] = ()  # initiator addresses/networks/"ALL" and names, sorted (tgt admits on any match)
    nexuses: tuple[TgtNexus, ...] = ()

    def lun(self, number: int) -> TgtLun | None:
        return next((lu for lu in self.luns if lu.lun == number), None)

    @property
    def disk_luns(self) -> tuple[TgtLun, ...]:
        return tuple(lu for lu in self.luns if lu.lun != CONTROLLER_LUN)


@dataclass(frozen=True)
class TgtSnapshot:
    """Everything the adapter reads from one tgtd, in one observation."""

    targets: tuple[TgtTargetState, ...] = ()
    accounts: tuple[str, ...] = ()
    discovery_incoming: tuple[str, ...] = ()
    discovery_outgoing: str | None = None
    portals: tuple[tuple[str, int], ...] = ()  # (address, port) tgtd listens on

    def target(self, iqn: str) -> TgtTargetState | None:
        return next((t for t in self.targets if t.iqn == iqn), None)

    def by_tid(self, tid: int) -> TgtTargetState | None:
        return next((t for t in self.targets if t.tid == tid), None)

    def without_sessions(self) -> TgtSnapshot:
        """The configuration part only (sessions come and go with initiators)."""
        return replace(self, targets=tuple(replace(t, nexuses=()) for t in self.targets))


@dataclass(frozen=True)
class TgtConnection:
    tid: int
    sid: int
    cid: int
    initiator: str
    address: str  # the initiator's address (tgtadm does not show the local one)


@dataclass(frozen=True)
class TcpSocket:
    local: str
    local_port: int
    peer: str
    peer_port: int


@dataclass
class _Building:
    """Mutable accumulator for one target while its block is parsed."""

    tid: int
    iqn: str
    state: str = "ready"
    section: str = ""
    luns: list[dict[str, str]] = field(default_factory=list)
    incoming: list[str] = field(default_factory=list)
    outgoing: str | None = None
    acl: list[str] = field(default_factory=list)
    nexuses: list[dict[str, object]] = field(default_factory=list)


_TARGET = re.compile(r"^Target (\d+): (\S+)$")
_SECTIONS = {"System information:": "system", "I_T nexus information:": "nexus",
             "LUN information:": "lun", "Account information:": "account", "ACL information:": "acl"}


def parse_targets(text: str) -> tuple[TgtTargetState, ...]:
    """``tgtadm --op show --mode target`` (all targets)."""
    targets: list[TgtTargetState] = []
    current: _Building | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _TARGET.match(raw)
        if match:
            if current is not None:
                targets.append(_finish(current))
            current = _Building(int(match.group(1)), match.group(2))
            continue
        if current is None:
            raise ValueError(f"unexpected line before any target: {raw!r}")
        if line in _SECTIONS:
            current.section = _SECTIONS[line]
            continue
        _target_line(current, line)
    if current is not None:
        targets.append(_finish(current))
    return tuple(targets)


def _target_line(t: _Building, line: str) -> None:
    key, sep, value = line.partition(": ")
    if not sep:  # "Backing store flags:" with an empty value loses its space to strip()
        key, value = key.removesuffix(":"), ""
    if t.section == "system":
        if key == "State":
            t.state = value
    elif t.section == "nexus":
        if key == "I_T nexus":
            t.nexuses.append({"itn": int(value), "initiator": "", "addresses": []})
        elif key == "Initiator" and t.nexuses:
            t.nexuses[-1]["initiator"] = value.split(" alias: ")[0]
        elif key == "IP Address" and t.nexuses:
            t.nexuses[-1]["addresses"].append(value)  # type: ignore[union-attr]
    elif t.section == "lun":
        if key == "LUN":
            t.luns.append({"LUN": value})
        elif t.luns:
            t.luns[-1][key] = value
    elif t.section == "account":
        if line.endswith(" (outgoing)"):
            t.outgoing = line.removesuffix(" (outgoing)")
        else:
            t.incoming.append(line)
    elif t.section == "acl":
        t.acl.append(line)


def _finish(t: _Building) -> TgtTargetState:
    nexuses = tuple(TgtNexus(int(n["itn"]), str(n["initiator"]), tuple(n["addresses"]))  # type: ignore[arg-type]
                    for n in t.nexuses)
    return TgtTargetState(tid=t.tid, iqn=t.iqn, state=t.state, luns=tuple(_lun(d) for d in t.luns),
                          incoming=tuple(t.incoming), outgoing=t.outgoing, acl=tuple(sorted(t.acl)),
                          nexuses=nexuses)


def _lun(d: dict[str, str]) -> TgtLun:
    size, _, block = d.get("Size", "").partition(", Block size: ")
    path = d.get("Backing store path", "None")
    return TgtLun(
        lun=int(d["LUN"]), type=d.get("Type", ""), scsi_id=d.get("SCSI ID", ""), scsi_sn=d.get("SCSI SN", ""),
        path=None if path == "None" else path, bs_type=d.get("Backing store type", ""),
        bs_flags=d.get("Backing store flags", ""), thin=d.get("Thin-provisioning") == "Yes",
        online=d.get("Online") == "Yes", readonly=d.get("Readonly") == "Yes", size=size,
        block_size=int(block) if block.isdigit() else 0,
    )


def parse_accounts(text: str) -> tuple[str, ...]:
    """``tgtadm --op show --mode account``: every account tgtd knows (bound or not), sorted.

    tgt lists them newest first, an order that means nothing (unlike the
    order of a target's bound accounts) and that a rollback cannot restore.
    """
    return tuple(sorted(line.strip() for line in text.splitlines()
                        if line.strip() and line.strip() != "Account list:"))


def parse_discovery(text: str) -> tuple[tuple[str, ...], str | None]:
    """The discovery (SendTargets) accounts from ``tgtadm --op show --mode sys``.

    tgt lists them under "Account information:" after the device types, and
    only when at least one incoming account is bound (outgoing alone is hidden).
    """
    incoming: list[str] = []
    outgoing: str | None = None
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line == "Account information:":
            inside = True
            continue
        if not inside or not line:
            continue
        if not raw.startswith(" "):  # the next top-level section ("iSNS:")
            break
        if line.endswith(" (outgoing)"):
            outgoing = line.removesuffix(" (outgoing)")
        else:
            incoming.append(line)
    return tuple(incoming), outgoing


_PORTAL = re.compile(r"^Portal: (\[[^\]]+\]|[^:\s]+):(\d+),\d+$")


def parse_portals(text: str) -> tuple[tuple[str, int], ...]:
    """``tgtadm --op show --mode portal``: (address, port) pairs, IPv6 without brackets."""
    portals = []
    for line in text.splitlines():
        match = _PORTAL.match(line.strip())
        if match:
            portals.append((match.group(1).strip("[]"), int(match.group(2))))
    return tuple(portals)


def parse_connections(tid: int, text: str) -> tuple[TgtConnection, ...]:
    """``tgtadm --op show --mode conn --tid N``."""
    conns: list[TgtConnection] = []
    sid = cid = -1
    initiator = ""
    for raw in text.splitlines():
        key, _, value = raw.strip().partition(": ")
        if key == "Session":
            sid = int(value)
        elif key == "Connection":
            cid = int(value)
        elif key == "Initiator":
            initiator = value
        elif key == "IP Address":
            conns.append(TgtConnection(tid, sid, cid, initiator, value))
    return tuple(conns)


def parse_ss(text: str) -> tuple[TcpSocket, ...]:
    """``ss -Htn state established``: "Recv-Q Send-Q local:port peer:port" per line."""
    sockets = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local, local_port = _endpoint(fields[2])
        peer, peer_port = _endpoint(fields[3])
        sockets.append(TcpSocket(local, local_port, peer, peer_port))
    return tuple(sockets)


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]").split("%")[0]  # [fe80::1%eth0] -> fe80::1
    return normalize_address(host), int(port)


def normalize_address(text: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 (``::ffff:10.0.0.1``) becomes plain IPv4."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
