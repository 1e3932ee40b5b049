"""Network namespaces joined by one bridge: the wiring of the local lab and of the network tests.

A :class:`Topology` owns a switch namespace holding a bridge, plus member
namespaces each connected to the bridge by a veth pair. Every address it
hands out lives inside namespaces it created (the root namespace is never
touched beyond creating and deleting the namespaces), and ``close()``
removes everything it made, in reverse order, even after a partial setup.

Namespace names carry a prefix so that two topologies never collide and a
crashed run can be swept with :func:`sweep`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns

NETNS_DIR = "/run/netns"
LAB_NETWORK = ipaddress.IPv4Network("10.77.0.0/24")  # only ever configured inside the topology's namespaces
LAB_NETWORK6 = ipaddress.IPv6Network("fd77::/64")


@dataclass
class Member:
    name: str  # short name inside the topology, e.g. "ctrl-a"
    netns: str  # the namespace's full name, e.g. "hcl-1234-ctrl-a"
    interface: str  # its interface on the shared segment
    address: ipaddress.IPv4Interface
    mac: str = ""
    address6: ipaddress.IPv6Interface | None = None


@dataclass
class Topology:
    """A bridge in its own namespace and members attached to it."""

    prefix: str
    network: ipaddress.IPv4Network = LAB_NETWORK
    ipv6_network: ipaddress.IPv6Network | None = LAB_NETWORK6
    members: dict[str, Member] = field(default_factory=dict)
    _created: list[str] = field(default_factory=list)
    _next_host: int = 1

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def create(self, names: Sequence[str]) -> Topology:
        try:
            self._make_namespace(self.switch)
            with IPRoute(netns=self.switch) as ipr:
                ipr.link("add", ifname="br0", kind="bridge")
                br = ipr.link_lookup(ifname="br0")[0]
                # Forward frames at once: no STP listening/learning delay on a lab segment.
                ipr.link("set", index=br, state="up", br_forward_delay=0, br_stp_state=0)
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            for name in names:
                self.add_member(name)
        except Exception:
            self.close()
            raise
        return self

    def add_member(self, name: str, address: str | None = None) -> Member:
        ns = f"{self.prefix}-{name}"
        self._make_namespace(ns)
        index = len(self.members)
        host_if, peer_if = f"v{index}", "eth0"
        addr = ipaddress.IPv4Interface(address) if address else self._next_address()
        with IPRoute(netns=self.switch) as ipr:
            # Both ends are born where they live (the peer straight into the member's namespace): the root
            # namespace never holds a lab interface, and names cannot collide with another topology's.
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": peer_if, "net_ns_fd": ns})
            idx = ipr.link_lookup(ifname=host_if)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname="br0")[0], state="up")
        v6 = None
        with IPRoute(netns=ns) as ipr:
            idx = ipr.link_lookup(ifname=peer_if)[0]
            ipr.link("set", index=idx, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.addr("add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
            if self.ipv6_network is not None:
                v6 = ipaddress.IPv6Interface(f"{self.ipv6_network[index + 1]}/{self.ipv6_network.prefixlen}")
                ipr.addr("add", index=idx, address=str(v6.ip), prefixlen=v6.network.prefixlen,
                         flags=0x02)  # IFA_F_NODAD: the lab's own addresses need no DAD wait
            mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        member = Member(name, ns, peer_if, addr, mac, v6)
        self.members[name] = member
        return member

    def _next_address(self) -> ipaddress.IPv4Interface:
        host = self.network.network_address + self._next_host
        self._next_host += 1
        return ipaddress.IPv4Interface(f"{host}/{self.network.prefixlen}")

    def address(self, index: int) -> ipaddress.IPv4Interface:
        """An address of the segment that no member was given (index counts down from the top: 1 is the highest)."""
        if index < 1:
            # index 0 used to hand out the broadcast address, which no host can hold.
            raise ValueError(f"address index must be at least 1, got {index}")
        candidate = ipaddress.IPv4Interface(f"{self.network.broadcast_address - index}/{self.network.prefixlen}")
        if any(m.address.ip == candidate.ip for m in self.members.values()):
            raise ValueError(f"{candidate} belongs to a member of the topology")
        return candidate

    def _make_namespace(self, name: str) -> None:
        if os.path.exists(os.path.join(NETNS_DIR, name)):
            raise FileExistsError(f"network namespace {name} already exists (another lab or test is running?)")
        netns.create(name)
        self._created.append(name)

    def link(self, member: str, up: bool) -> None:
        """Set a member's segment interface up or down (the cable, as the member sees it)."""
        m = self.members[member]
        with IPRoute(netns=m.netns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=m.interface)[0], state="up" if up else "down")

    def run(self, member: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a command inside a member namespace (test and lab helper, not used by adapters)."""
        check = kwargs.pop("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.members[member].netns, *argv], check=check, **kwargs)

    def close(self) -> None:
        for name in reversed(self._created):
            with contextlib.suppress(OSError, FileNotFoundError):
                netns.remove(name)
        self._created.clear()
        self.members.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep(prefix: str) -> list[str]:
    """Remove namespaces left behind by a crashed run with this prefix; return their names."""
    removed = []
    for name in list_namespaces():
        if name.startswith(prefix + "-"):
            with contextlib.suppress(OSError):
                netns.remove(name)
                removed.append(name)
    return removed


def pids_in(name: str) -> list[int]:
    """The processes whose network namespace is ``name`` (what `ip netns pids` prints), this one excluded."""
    try:
        target = os.stat(os.path.join(NETNS_DIR, name))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return sorted(found)


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def topology(prefix: str, names: Sequence[str], **kwargs) -> Iterator[Topology]:
    topo = Topology(prefix, **kwargs).create(names)
    try:
        yield topo
    finally:
        topo.close()
