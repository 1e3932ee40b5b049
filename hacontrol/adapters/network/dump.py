"""Which addresses are configured on which interface: one RTM_GETLINK and one RTM_GETADDR dump, parsed for the
few attributes that question needs (interface index and name; address and prefix length).

The agent asks this on every tick (which VIPs and portals are here). pyroute2 answers it too, but decodes
every attribute of every message through an asyncio loop: 100+ ms per call on a TCG guest of the rig, where
it was the largest part of the agent's CPU. Changing addresses stays with pyroute2 (``adapter.py``).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
import struct
import time

from hacontrol.adapters.network.namespace import open_socket
from hacontrol.agent.protocols import AdapterError

NETLINK_ROUTE = 0
RTM_GETLINK, RTM_NEWLINK, RTM_GETADDR, RTM_NEWADDR = 18, 16, 22, 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2

NLMSG = struct.Struct("=IHHII")  # length, type, flags, seq, pid
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTATTR = struct.Struct("=HH")  # length, type
_seq = itertools.count(1)
Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            break
        out.setdefault(kind & 0x3FFF, data[offset + RTATTR.size:offset + length])
        offset += _align(length)
    return out


def parse_messages(data: bytes) -> tuple[list[tuple[int, bytes, int]], bool]:
    """Netlink messages in one datagram as (type, buffer, offset of the payload); and whether a DONE came."""
    out, offset, done = [], 0, False
    while offset + NLMSG.size <= len(data):
        length, kind, _, _, _ = NLMSG.unpack_from(data, offset)
        if length < NLMSG.size:
            break
        if kind == NLMSG_DONE:
            done = True
        elif kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + NLMSG.size)
            if code:
                raise AdapterError(f"netlink dump refused: {errno.errorcode.get(-code, -code)}")
        else:
            out.append((kind, data[offset:offset + length], NLMSG.size))
        offset += _align(length)
    return out, done


def link_name(buf: bytes, at: int) -> tuple[int, str] | None:
    _, _, index, _, _ = IFINFO.unpack_from(buf, at)
    name = _attrs(buf, at + IFINFO.size, len(buf)).get(IFLA_IFNAME)
    return None if name is None else (index, name.split(b"\0", 1)[0].decode(errors="replace"))


def address(buf: bytes, at: int) -> tuple[int, Address] | None:
    family, prefix, _, _, index = IFADDR.unpack_from(buf, at)
    attrs = _attrs(buf, at + IFADDR.size, len(buf))
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)  # IFA_LOCAL: ours (IFA_ADDRESS: a p2p peer's)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return index, ipaddress.ip_interface((ipaddress.ip_address(raw), prefix))


def _dump(sock: socket.socket, kind: int, header: bytes, deadline: float) -> list[tuple[int, bytes, int]]:
    seq = next(_seq)
    sock.send(NLMSG.pack(NLMSG.size + len(header), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + header)
    out: list[tuple[int, bytes, int]] = []
    for _ in range(10_000):  # bounded; a dump of a controller's addresses is a handful of datagrams
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AdapterError("netlink dump did not finish before the deadline")
        sock.settimeout(remaining)
        try:
            messages, done = parse_messages(sock.recv(65536))
        except TimeoutError:
            raise AdapterError("netlink dump did not finish before the deadline") from None
        out.extend(messages)
        if done:
            return out
    raise AdapterError("netlink dump did not end")



def configured(netns: str | None, timeout_s: float = 2.0) -> set[tuple[str, Address]]:
    """Every (interface name, address/prefix) configured in ``netns`` (None: our own namespace)."""
    deadline = time.monotonic() + timeout_s
    sock = open_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        names = dict(filter(None, (link_name(b, at) for kind, b, at in
                                   _dump(sock, RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0), deadline)
                                   if kind == RTM_NEWLINK)))
        found = (address(b, at) for kind, b, at in _dump(sock, RTM_GETADDR, IFADDR.pack(0, 0, 0, 0, 0), deadline)
                 if kind == RTM_NEWADDR)
        return {(names.get(index, ""), ip) for index, ip in filter(None, found)}
    finally:
        sock.close()
