"""Cutting TCP connections of any process through sock_diag (NETLINK_SOCK_DIAG, SOCK_DESTROY).

SOCK_DESTROY makes the kernel abort the socket as ``tcp_abort()`` does: the peer is sent a RST
(while the local address still exists to send it from) and the owning process's next call
fails with ECONNABORTED. It needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN in the socket's
namespace; the netlink socket must itself live in that namespace (sock_diag answers for the
namespace of the asking socket).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from pyroute2.netlink import NETLINK_SOCK_DIAG, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.diag import SOCK_DESTROY, SOCK_DIAG_BY_FAMILY, inet_diag_msg, inet_diag_req

from hacontrol.adapters.network.namespace import open_socket
from hacontrol.agent.protocols import AdapterError, DeadlineExceeded

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# TCP states in which a peer may still be waiting on us (linux/tcp_states.h numbering).
_TCP_ESTABLISHED, _TCP_SYN_RECV, _TCP_FIN_WAIT1, _TCP_FIN_WAIT2 = 1, 3, 4, 5
_TCP_CLOSE_WAIT, _TCP_LAST_ACK, _TCP_CLOSING = 8, 9, 11
CONNECTED_STATES = sum(1 << s for s in (_TCP_ESTABLISHED, _TCP_SYN_RECV, _TCP_FIN_WAIT1, _TCP_FIN_WAIT2,
                                          _TCP_CLOSE_WAIT, _TCP_LAST_ACK, _TCP_CLOSING))
_NLMSG_HEADER = struct.Struct("=IHHII")
_MAX_MESSAGES = 100_000  # sockets listed per dump: bounds the loop on a pathological host


class DestroyUnsupported(AdapterError):
    """The kernel has no SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY unset) or refused it (EOPNOTSUPP)."""


@dataclass(frozen=True)
class TcpSocket:
    family: int
    local: IPAddress
    local_port: int
    remote: IPAddress
    remote_port: int
    interface: int
    cookie: int

    def describe(self) -> str:
        return f"{self.local}:{self.local_port}<->{self.remote}:{self.remote_port}"


class SockDiag:
    """One NETLINK_SOCK_DIAG socket in a namespace; every receive is bounded by the caller's deadline."""

    def __init__(self, netns: str | None, deadline: float):
        self._deadline = deadline
        self._seq = 0
        self._pending: list[tuple[int, int, bytes]] = []
        self._sock = open_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        try:
            self._sock.bind((0, 0))
        except OSError as exc:
            self._sock.close()
            raise AdapterError(f"cannot open a sock_diag socket: {exc}") from exc

    def connections(self, local: IPAddress, ports: Collection[int] | None) -> list[TcpSocket]:
        """Connected TCP sockets whose local address is ``local`` (and local port in ``ports``, unless None)."""
        # A dual-stack listener (bound to ::) holds IPv4 connections as AF_INET6 with ::ffff:a.b.c.d.
        families = (socket.AF_INET, socket.AF_INET6) if local.version == 4 else (socket.AF_INET6,)
        found = []
        for family in families:
            for sock in self._dump(family):
                if _unmapped(sock.local) == local and (ports is None or sock.local_port in ports):
                    found.append(sock)
        return found

    def destroy(self, sock: TcpSocket) -> bool:
        """Abort one socket; False if it was already gone."""
        req = _request(sock.family, CONNECTED_STATES)
        for key, value in (("idiag_sport", sock.local_port), ("idiag_dport", sock.remote_port),
                           ("idiag_src", _words(sock.local)), ("idiag_dst", _words(sock.remote)),
                           ("idiag_if", sock.interface), ("idiag_cookie", sock.cookie)):
            req[key] = value
        code = self._ack(self._send(req, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK))
        if code in (errno.ENOENT, errno.ESTALE):  # closed meanwhile, or the 4-tuple was reused
            return False
        if code == errno.EOPNOTSUPP:
            raise DestroyUnsupported("this kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is not set)")
        if code:
            raise AdapterError(f"SOCK_DESTROY of {sock.describe()} failed: {errno.errorcode.get(code, code)}")
        return True

    def _dump(self, family: int) -> Iterator[TcpSocket]:
        seq = self._send(_request(family, CONNECTED_STATES), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP)
        for _ in range(_MAX_MESSAGES):
            kind, payload = self._next(seq)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                code = _error_code(payload)
                raise AdapterError(f"sock_diag dump failed: {errno.errorcode.get(code, code)}")
            if kind == SOCK_DIAG_BY_FAMILY:
                yield _decode(payload)
        raise AdapterError(f"sock_diag dump listed more than {_MAX_MESSAGES} sockets")

    def _send(self, req: inet_diag_req, kind: int, flags: int) -> int:
        self._seq += 1
        req["header"]["type"] = kind
        req["header"]["flags"] = flags
        req["header"]["sequence_number"] = self._seq
        req.encode()
        self._sock.send(req.data)
        self._pending.clear()  # leftovers answer an earlier request
        return self._seq

    def _ack(self, seq: int) -> int:
        kind, payload = self._next(seq)
        if kind != NLMSG_ERROR:
            raise AdapterError(f"sock_diag answered type {kind} where an acknowledgement was expected")
        return _error_code(payload)

    def _next(self, seq: int) -> tuple[int, bytes]:
        """The next message answering ``seq``, as (type, whole message including its netlink header)."""
        for _ in range(_MAX_MESSAGES):
            if not self._pending:
                self._pending = list(_split(self._receive()))
            kind, msg_seq, message = self._pending.pop(0)
            if msg_seq == seq:
                return kind, message
        raise AdapterError("sock_diag never answered our request")

    def _receive(self) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed while listing or cutting TCP connections")
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv(1 << 20)
        except TimeoutError as exc:
            raise DeadlineExceeded("deadline passed while listing or cutting TCP connections") from exc

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _request(family: int, states: int) -> inet_diag_req:
    req = inet_diag_req()
    req["sdiag_family"] = family
    req["sdiag_protocol"] = socket.IPPROTO_TCP
    req["idiag_states"] = states
    for key in ("idiag_ext", "idiag_sport", "idiag_dport", "idiag_if", "idiag_cookie"):
        req[key] = 0
    req["idiag_src"] = req["idiag_dst"] = (0, 0, 0, 0)
    return req


def _split(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size:
            return
        yield kind, seq, data[offset : offset + length]
        offset += (length + 3) & ~3


def _error_code(message: bytes) -> int:
    """errno of an NLMSG_ERROR (0 for an acknowledgement); the kernel sends it negated."""
    return -struct.unpack_from("=i", message, _NLMSG_HEADER.size)[0]


def _decode(message: bytes) -> TcpSocket:
    msg = inet_diag_msg(message)
    msg.decode()
    return TcpSocket(
        family=msg["idiag_family"],
        local=ipaddress.ip_address(msg["idiag_src"]),
        local_port=msg["idiag_sport"],
        remote=ipaddress.ip_address(msg["idiag_dst"]),
        remote_port=msg["idiag_dport"],
        interface=msg["idiag_if"],
        cookie=msg["idiag_cookie"],
    )


def _words(address: IPAddress) -> tuple[int, int, int, int]:
    return struct.unpack(">4I", address.packed.ljust(16, b"\x00"))


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
