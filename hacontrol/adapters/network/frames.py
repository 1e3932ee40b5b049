"""Ethernet frames that announce an address or check that nobody else holds it. Pure: bytes in, bytes out.

IPv4 (RFC 5227): a *probe* is an ARP request with sender IP 0.0.0.0, so that no
neighbour learns anything from it while we are not yet sure the address is free;
an *announcement* is an ARP request with sender IP = target IP = the address.

IPv6 (RFC 4861/4862): duplicate detection is a Neighbor Solicitation from :: to
the address's solicited-node group; the announcement is an unsolicited Neighbor
Advertisement to all-nodes with the Override flag and our link-layer address.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ARP_REQUEST = 1
ARP_REPLY = 2
ICMPV6_NS = 135
ICMPV6_NA = 136
NA_FLAG_OVERRIDE = 0x20
ND_OPT_SOURCE_LLADDR = 1
ND_OPT_TARGET_LLADDR = 2
IPPROTO_ICMPV6 = 58

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
UNSPECIFIED = ipaddress.IPv6Address("::")
_MIN_FRAME = 60  # Ethernet minimum without FCS; pad here rather than trust every driver to
_ETH_HEADER = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_ND_HEADER = struct.Struct("!BBHI16s")  # type, code, checksum, flags/reserved, target


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    frame = _ETH_HEADER.pack(dst, src, ethertype) + payload
    return frame.ljust(_MIN_FRAME, b"\x00")


def _arp(op: int, mac: bytes, sender: ipaddress.IPv4Address, target: ipaddress.IPv4Address) -> bytes:
    # Target hardware address zero: RFC 5227 says it is ignored and should be zero.
    body = _ARP.pack(1, ETH_P_IP, 6, 4, op, mac, sender.packed, ZERO_MAC, target.packed)
    return _ethernet(BROADCAST_MAC, mac, ETH_P_ARP, body)


def arp_probe(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    return _arp(ARP_REQUEST, mac, ipaddress.IPv4Address(0), address)


def arp_announcement(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    return _arp(ARP_REQUEST, mac, address, address)


@dataclass(frozen=True)
class ArpPacket:
    op: int
    sender_mac: bytes
    sender_ip: ipaddress.IPv4Address
    target_ip: ipaddress.IPv4Address


def parse_arp(frame: bytes) -> ArpPacket | None:
    """An Ethernet/IPv4 ARP packet, or None for anything else."""
    if len(frame) < _ETH_HEADER.size + _ARP.size:
        return None
    if _ETH_HEADER.unpack_from(frame)[2] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, _ETH_HEADER.size)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return None
    return ArpPacket(op, sha, ipaddress.IPv4Address(spa), ipaddress.IPv4Address(tpa))


def solicited_node(address: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + address.packed[13:])


def multicast_mac(group: ipaddress.IPv6Address) -> bytes:
    return b"\x33\x33" + group.packed[12:]


def internet_checksum(data: bytes) -> int:
    """The 16-bit one's complement sum of RFC 1071 (ICMPv6, TCP)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _icmpv6_frame(mac: bytes, dst_mac: bytes, src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address,
                  message: bytes) -> bytes:
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    csum = internet_checksum(pseudo + message)
    message = message[:2] + struct.pack("!H", csum) + message[4:]
    # Hop limit 255: receivers drop ND messages that crossed a router.
    header = _IPV6_HEADER.pack(6 << 28, len(message), IPPROTO_ICMPV6, 255, src.packed, dst.packed)
    return _ethernet(dst_mac, mac, ETH_P_IPV6, header + message)


def dad_solicitation(mac: bytes, address: ipaddress.IPv6Address) -> bytes:
    """RFC 4862 DAD probe: from ::, no source link-layer option (forbidden with ::)."""
    group = solicited_node(address)
    message = _ND_HEADER.pack(ICMPV6_NS, 0, 0, 0, address.packed)
    return _icmpv6_frame(mac, multicast_mac(group), UNSPECIFIED, group, message)


def unsolicited_advertisement(mac: bytes, address: ipaddress.IPv6Address) -> bytes:
    """Override set so neighbours replace a cached link-layer address; Solicited clear (RFC 4861 7.2.6)."""
    option = struct.pack("!BB", ND_OPT_TARGET_LLADDR, 1) + mac
    message = _ND_HEADER.pack(ICMPV6_NA, 0, 0, NA_FLAG_OVERRIDE << 24, address.packed) + option
    return _icmpv6_frame(mac, multicast_mac(ALL_NODES), address, ALL_NODES, message)


@dataclass(frozen=True)
class NeighborMessage:
    kind: int  # ICMPV6_NS or ICMPV6_NA
    frame_source: bytes
    source: ipaddress.IPv6Address
    target: ipaddress.IPv6Address
    lladdr: bytes | None  # the source/target link-layer option, when present


def parse_neighbor_message(frame: bytes) -> NeighborMessage | None:
    """A Neighbor Solicitation or Advertisement without extension headers, or None."""
    offset = _ETH_HEADER.size + _IPV6_HEADER.size
    if len(frame) < offset + _ND_HEADER.size:
        return None
    _dst, src_mac, ethertype = _ETH_HEADER.unpack_from(frame)
    _vtf, payload_len, next_header, _hops, src, _dst_ip = _IPV6_HEADER.unpack_from(frame, _ETH_HEADER.size)
    if ethertype != ETH_P_IPV6 or next_header != IPPROTO_ICMPV6:
        return None
    kind, code, _csum, _flags, target = _ND_HEADER.unpack_from(frame, offset)
    if kind not in (ICMPV6_NS, ICMPV6_NA) or code != 0:
        return None
    return NeighborMessage(kind, src_mac, ipaddress.IPv6Address(src), ipaddress.IPv6Address(target),
                           _lladdr_option(frame[: offset + payload_len], offset + _ND_HEADER.size))


def _lladdr_option(frame: bytes, offset: int) -> bytes | None:
    for _ in range(16):  # a handful of options at most; bounded against malformed lengths
        if offset + 8 > len(frame):
            return None
        kind, units = frame[offset], frame[offset + 1]
        if units == 0:
            return None
        if kind in (ND_OPT_SOURCE_LLADDR, ND_OPT_TARGET_LLADDR):
            return frame[offset + 2 : offset + 8]
        offset += units * 8
    return None


# Classic BPF (struct sock_filter: code, jt, jf, k) keeping only ICMPv6 NS/NA without extension headers.
# Attached to the DAD socket so a busy storage interface does not copy all its IPv6 traffic to us.
_BPF_LD_H_ABS, _BPF_LD_B_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x28, 0x30, 0x15, 0x06
NEIGHBOR_DISCOVERY_FILTER: tuple[tuple[int, int, int, int], ...] = (
    (_BPF_LD_H_ABS, 0, 0, 12),  # ethertype
    (_BPF_JEQ_K, 0, 6, ETH_P_IPV6),
    (_BPF_LD_B_ABS, 0, 0, _ETH_HEADER.size + 6),  # IPv6 next header
    (_BPF_JEQ_K, 0, 4, IPPROTO_ICMPV6),
    (_BPF_LD_B_ABS, 0, 0, _ETH_HEADER.size + _IPV6_HEADER.size),  # ICMPv6 type
    (_BPF_JEQ_K, 1, 0, ICMPV6_NA),
    (_BPF_JEQ_K, 0, 1, ICMPV6_NS),
    (_BPF_RET_K, 0, 0, 0xFFFF),
    (_BPF_RET_K, 0, 0, 0),
)
