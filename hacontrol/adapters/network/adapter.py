"""``Network``: the NetworkPort on real interfaces (pyroute2 rtnetlink, raw frames, sock_diag)."""

from __future__ import annotations

import errno
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hacontrol.adapters.network import dump, frames
from hacontrol.adapters.network.namespace import rtnl
from hacontrol.adapters.network.rawlink import MAX_FRAMES_PER_WAIT, RawLink
from hacontrol.adapters.network.sockdiag import DestroyUnsupported, SockDiag
from hacontrol.agent.protocols import AdapterError, DeadlineExceeded, DuplicateAddress, ManagedAddress

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFA_F_NODAD = 0x02
DAD_PROBES = 2  # spread over the window: one lost probe must not hide a duplicate


@dataclass(frozen=True)
class _Link:
    index: int
    name: str
    mac: bytes
    up: bool
    carrier: bool
    addresses: frozenset[IPInterface]


class Network:
    """Managed addresses on this controller's interfaces, in ``netns`` (None: the agent's own namespace).

    Consumer: the agent's observer (``present``) and executor (``claim``/``release``/``announce``).
    Every method returns or raises by ``deadline`` (a ``time.monotonic()`` value).
    """

    def __init__(self, netns: str | None = None, garp_count: int = 3, garp_interval_s: float = 0.05,
                 dad_timeout_s: float = 0.2, iscsi_ports: Iterable[int] | None = (3260,), *, log: Any = None):
        self.netns = netns
        self.garp_count = garp_count
        self.garp_interval_s = garp_interval_s
        self.dad_timeout_s = dad_timeout_s
        # Local ports whose connections release() cuts; None: every connection on the address.
        self.iscsi_ports = frozenset(iscsi_ports) if iscsi_ports is not None else None
        self._log = (log or structlog.get_logger("hacontrol.network")).bind(netns=netns)

    def present(self, addresses: Iterable[ManagedAddress]) -> frozenset[str]:
        wanted = list(addresses)
        here = dump.configured(self.netns)  # every tick: a lean parse, not pyroute2's (dump.py says why)
        return frozenset(a.key for a in wanted if (a.interface, a.address) in here)

    def claim(self, address: ManagedAddress, deadline: float, check_duplicates: bool = True) -> None:
        """Add and announce ``address``; first make sure nobody answers for it, unless the caller knows
        (a planned hand-over: the peer reported the address released) and asks to skip the check."""
        started = time.monotonic()
        _check_deadline(deadline, "claim", address)
        with rtnl(self.netns) as ipr:
            link = _link(ipr, address.interface, self.netns)
            held = address.address in link.addresses
            if not held:
                _check_claimable(link, address)
            # One raw socket for the check and the announcements: closing a packet socket waits for an RCU
            # grace period (~10 ms here), which must not sit between the check and the first announcement.
            with self._raw_link(link, address, listen=not held and check_duplicates) as raw:
                if not held:
                    if check_duplicates:
                        self._check_duplicate(raw, link, address, deadline)
                    _add(ipr, link, address)
                sent = self._announce(raw, link, address, deadline)
        self._log.info("network.claim", address=address.key, interface=link.name, already_held=held,
                       announcements=sent, duration_s=round(time.monotonic() - started, 4))

    def release(self, address: ManagedAddress, deadline: float) -> None:
        started = time.monotonic()
        _check_deadline(deadline, "release", address)
        with rtnl(self.netns) as ipr:
            link = _link(ipr, address.interface, self.netns)
            held = address.address in link.addresses
            # Cut first: a RST can only be sent while its source address is still configured.
            cut = self._cut(address, deadline) if held else 0
            if held:
                _remove(ipr, link, address)
        # Sockets accepted between the cut and the removal can no longer send a RST; aborting them still
        # frees the target's session, and their peer gets a RST from the new holder on its next segment.
        late = self._cut(address, deadline)
        self._log.info("network.release", address=address.key, interface=link.name, was_held=held,
                       connections_cut=cut, late_connections_cut=late,
                       duration_s=round(time.monotonic() - started, 4))

    def announce(self, address: ManagedAddress, deadline: float) -> None:
        _check_deadline(deadline, "announce", address)
        with rtnl(self.netns) as ipr:
            link = _link(ipr, address.interface, self.netns)
        if address.address not in link.addresses:
            raise AdapterError(f"not announcing {address.key}: it is not configured on {link.name}")
        with self._raw_link(link, address, listen=False) as raw:
            sent = self._announce(raw, link, address, deadline)
        self._log.debug("network.announce", address=address.key, interface=link.name, announcements=sent)

    def _raw_link(self, link: _Link, address: ManagedAddress, listen: bool) -> RawLink:
        """A socket on the link; ``listen`` also receives what the duplicate-address check looks for."""
        if not listen:
            return RawLink(self.netns, link.name)
        if address.address.version == 4:
            return RawLink(self.netns, link.name, frames.ETH_P_ARP)
        return RawLink(self.netns, link.name, frames.ETH_P_IPV6, frames.NEIGHBOR_DISCOVERY_FILTER)

    def _check_duplicate(self, raw: RawLink, link: _Link, address: ManagedAddress, deadline: float) -> None:
        if self.dad_timeout_s <= 0:
            return
        remaining = deadline - time.monotonic()
        if remaining < self.dad_timeout_s:
            # A shortened check would be a weaker one: refuse instead of claiming on partial evidence.
            raise DeadlineExceeded(f"claim {address.key}: {max(remaining, 0):.3f} s left, the duplicate-address "
                                   f"check needs {self.dad_timeout_s} s")
        ip = address.address.ip
        if isinstance(ip, ipaddress.IPv4Address):
            probe, owner_of = frames.arp_probe(link.mac, ip), _arp_owner(link.mac, ip)
        else:
            probe, owner_of = frames.dad_solicitation(link.mac, ip), _nd_owner(link.mac, ip)
        owner = _probe(raw, probe, time.monotonic() + self.dad_timeout_s, owner_of)
        if owner is not None:
            self._log.warning("network.duplicate", address=address.key, interface=link.name, owner=owner)
            raise DuplicateAddress(address.key, owner)

    def _announce(self, raw: RawLink, link: _Link, address: ManagedAddress, deadline: float) -> int:
        """Send garp_count announcements, the first at once; returns how many went out."""
        if self.garp_count <= 0:
            return 0
        ip = address.address.ip
        frame = (frames.arp_announcement(link.mac, ip) if isinstance(ip, ipaddress.IPv4Address)
                 else frames.unsolicited_advertisement(link.mac, ip))
        raw.send(frame)
        for sent in range(1, self.garp_count):
            if time.monotonic() + self.garp_interval_s > deadline:
                raise DeadlineExceeded(f"{address.key} is configured but was announced only {sent} of "
                                       f"{self.garp_count} times before the deadline")
            time.sleep(self.garp_interval_s)
            raw.send(frame)
        return self.garp_count

    def _cut(self, address: ManagedAddress, deadline: float) -> int:
        """Abort TCP connections on the address; best effort, the address must go regardless."""
        try:
            with SockDiag(self.netns, deadline) as diag:
                doomed = diag.connections(address.address.ip, self.iscsi_ports)
                return sum(diag.destroy(sock) for sock in doomed)
        except DestroyUnsupported as exc:
            self._log.error("network.cut_unsupported", address=address.key, error=str(exc))
        except AdapterError as exc:
            self._log.warning("network.cut_failed", address=address.key, error=str(exc))
        return 0


def _check_deadline(deadline: float, operation: str, address: ManagedAddress) -> None:
    if time.monotonic() >= deadline:
        raise DeadlineExceeded(f"{operation} {address.key}: the deadline had passed before it started")


def _link(ipr: IPRoute, name: str, netns: str | None) -> _Link:
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        where = f"network namespace {netns}" if netns else "this host"
        raise AdapterError(f"interface {name} does not exist in {where}")
    msg = ipr.get_links(indexes[0])[0]
    mac = msg.get_attr("IFLA_ADDRESS")
    if not mac:
        raise AdapterError(f"interface {name} has no link-layer address: not an Ethernet interface")
    return _Link(index=indexes[0], name=name, mac=frames.mac_bytes(mac), up=bool(msg["flags"] & IFF_UP),
                 carrier=bool(msg["flags"] & IFF_LOWER_UP),
                 addresses=frozenset(_interface_of(a) for a in ipr.get_addr(index=indexes[0])))


def _interface_of(msg: Any) -> IPInterface:
    # IFA_LOCAL is the address itself on IPv4 (IFA_ADDRESS is the peer on point-to-point links).
    ip = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    return ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}")


def _check_claimable(link: _Link, address: ManagedAddress) -> None:
    if not link.up:
        raise AdapterError(f"cannot claim {address.key}: interface {link.name} is down")
    if not link.carrier:
        raise AdapterError(f"cannot claim {address.key}: interface {link.name} has no carrier")
    vip = address.address
    own = [a for a in link.addresses if a.version == vip.version and not a.ip.is_link_local]
    if not any(vip.ip in a.network or a.ip in vip.network for a in own):
        have = ", ".join(sorted(str(a) for a in own)) or "none"
        raise AdapterError(f"cannot claim {address.key}: no address of {link.name} is in {vip.network} "
                           f"(its IPv{vip.version} addresses: {have})")


def _add(ipr: IPRoute, link: _Link, address: ManagedAddress) -> None:
    vip = address.address
    extra = {"flags": IFA_F_NODAD} if vip.version == 6 else {}  # we just did our own check
    try:
        ipr.addr("add", index=link.index, address=str(vip.ip), prefixlen=vip.network.prefixlen, **extra)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:  # EEXIST: added meanwhile, which is what we wanted
            raise AdapterError(f"cannot add {address.key} to {link.name}: {exc}") from exc


def _remove(ipr: IPRoute, link: _Link, address: ManagedAddress) -> None:
    vip = address.address
    try:
        ipr.addr("del", index=link.index, address=str(vip.ip), prefixlen=vip.network.prefixlen)
    except NetlinkError as exc:
        if exc.code != errno.EADDRNOTAVAIL:  # already gone
            raise AdapterError(f"cannot remove {address.key} from {link.name}: {exc}") from exc


OwnerOf = Callable[[bytes], str | None]


def _probe(raw: RawLink, probe: bytes, window_end: float, owner_of: OwnerOf) -> str | None:
    """Send DAD_PROBES probes spread over the window; the MAC of the first other claimant, or None."""
    start = time.monotonic()
    send_at = [start + n * (window_end - start) / DAD_PROBES for n in range(DAD_PROBES)]
    for _ in range(MAX_FRAMES_PER_WAIT):
        while send_at and send_at[0] <= time.monotonic():
            raw.send(probe)
            send_at.pop(0)
        frame = raw.receive(send_at[0] if send_at else window_end)
        if frame is not None and (owner := owner_of(frame)) is not None:
            return owner
        if frame is None and not send_at:
            return None
    raise AdapterError(f"duplicate-address check on {raw.ifname} drowned in more than {MAX_FRAMES_PER_WAIT} frames")


def _arp_owner(own_mac: bytes, ip: ipaddress.IPv4Address) -> OwnerOf:
    def owner_of(frame: bytes) -> str | None:
        pkt = frames.parse_arp(frame)
        if pkt is None or pkt.sender_mac == own_mac:
            return None
        if pkt.sender_ip == ip:  # the holder's reply to our probe, or its own announcement
            return frames.mac_text(pkt.sender_mac)
        if pkt.op == frames.ARP_REQUEST and int(pkt.sender_ip) == 0 and pkt.target_ip == ip:
            return frames.mac_text(pkt.sender_mac)  # someone else probing for it right now (RFC 5227 2.1.1)
        return None

    return owner_of


def _nd_owner(own_mac: bytes, ip: ipaddress.IPv6Address) -> OwnerOf:
    def owner_of(frame: bytes) -> str | None:
        msg = frames.parse_neighbor_message(frame)
        if msg is None or msg.frame_source == own_mac or msg.target != ip:
            return None
        if msg.kind == frames.ICMPV6_NA:
            return frames.mac_text(msg.lladdr or msg.frame_source)
        if msg.source == frames.UNSPECIFIED:  # another node's DAD for the same address
            return frames.mac_text(msg.frame_source)
        return None  # address resolution by a neighbour: not a claim

    return owner_of
