"""Tickle ACKs: make an initiator notice at once that the controller behind its connection is gone.

A controller that dies sends nothing. The initiator keeps retransmitting its unacknowledged segment with TCP's
exponential backoff (0.2, 0.4, 0.8, 1.6, 3.2, 6.4 s ...), so even after the survivor has adopted the dead
controller's portal address, the initiator's next packet, the one that meets a reset, can be 6 to 13 s away
(measured in the rig: 11.7 s). A tickle is a bare TCP ACK with sequence numbers the initiator cannot accept,
sent from the adopted address and port to each of the dead controller's connections: the initiator answers it
with an ACK carrying its real sequence numbers (RFC 793 / RFC 5961 challenge ACK), the survivor's kernel has no
socket for it and answers with a RST that the initiator accepts, and the initiator logs in again at once.

Each controller publishes its iSCSI connections (:func:`connections_on`, in its member report); the survivor
tickles the last list it saw from the peer (:func:`send_tickles`) right after it adopted the peer's addresses.
Both need CAP_NET_RAW / CAP_NET_ADMIN (the agent runs as root).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Collection, Sequence

from hacontrol.adapters.network.frames import internet_checksum
from hacontrol.adapters.network.namespace import open_socket
from hacontrol.adapters.network.sockdiag import SockDiag
from hacontrol.agent.protocols import AdapterError

Connection = tuple[str, int, str, int]  # local address, local port, remote address, remote port
_TCP_ACK = 0x10
MAX_TICKLES = 4096  # connections tickled per takeover: bounds the work on a huge, stale list


def connections_on(netns: str | None, addresses: Collection[str], ports: Collection[int],
                   deadline: float) -> list[Connection]:
    """Established TCP connections whose local side is one of ``addresses`` and ``ports``, sorted."""
    found: set[Connection] = set()
    with SockDiag(netns, deadline) as diag:
        for text in addresses:
            local = ipaddress.ip_address(text)
            for s in diag.connections(local, ports):
                remote = s.remote.ipv4_mapped if isinstance(s.remote, ipaddress.IPv6Address) and \
                    s.remote.ipv4_mapped else s.remote
                found.add((str(local), s.local_port, str(remote), s.remote_port))
    return sorted(found)


def parse_connections(raw: object) -> list[Connection]:
    """The peer's published list, validated (it comes from ZooKeeper: anything malformed is dropped)."""
    out: list[Connection] = []
    if not isinstance(raw, list):
        return out
    for item in raw[:MAX_TICKLES]:
        try:
            local, lport, remote, rport = item
            ipaddress.ip_address(local), ipaddress.ip_address(remote)
            if not (0 < int(lport) < 65536 and 0 < int(rport) < 65536):
                continue
            out.append((str(local), int(lport), str(remote), int(rport)))
        except (TypeError, ValueError):
            continue
    return out


def ack_segment(src: str, src_port: int, dst: str, dst_port: int, *, seq: int = 0, ack: int = 0) -> bytes:
    """A 20-byte TCP header with only ACK set, checksummed over the IPv4 or IPv6 pseudo-header."""
    header = struct.pack("!HHIIBBHHH", src_port, dst_port, seq, ack, 5 << 4, _TCP_ACK, 1024, 0, 0)
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"{src} and {dst} are not the same IP version")
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", len(header), socket.IPPROTO_TCP)
    checksum = internet_checksum(pseudo + header)
    return header[:16] + struct.pack("!H", checksum) + header[18:]


def send_tickles(netns: str | None, connections: Sequence[Connection], rounds: int = 2,
                 gap_s: float = 0.05) -> int:
    """Send ``rounds`` tickle ACKs to every connection (from its local address, which must now be ours).
    Returns the number of segments sent; a connection whose address is not local here is skipped."""
    sockets: dict[tuple[int, str], socket.socket | None] = {}
    sent = 0
    try:
        for r in range(rounds):
            for local, lport, remote, rport in connections[:MAX_TICKLES]:
                family = socket.AF_INET6 if ":" in local else socket.AF_INET
                sock = sockets.get((family, local), False)
                if sock is False:
                    sock = sockets[(family, local)] = _raw_socket(netns, family, local)
                if sock is None:
                    continue
                try:
                    sock.sendto(ack_segment(local, lport, remote, rport), (remote, 0))
                    sent += 1
                except OSError:
                    continue  # one unreachable initiator must not stop the others
            if r + 1 < rounds:
                time.sleep(gap_s)
    finally:
        for sock in sockets.values():
            if sock is not None:
                sock.close()
    return sent


def _raw_socket(netns: str | None, family: int, local: str) -> socket.socket | None:
    try:
        sock = open_socket(netns, family, socket.SOCK_RAW, socket.IPPROTO_TCP)
    except OSError as exc:
        raise AdapterError(f"cannot open a raw TCP socket for tickle ACKs: {exc}") from exc
    try:
        sock.bind((local, 0))
    except OSError:
        sock.close()
        return None  # the address is not ours (yet): nothing to tickle from it
    return sock
