"""The network adapter against real interfaces: controllers ``a`` and ``b`` and a ``client`` on one bridge.

Every address lives in namespaces the test's Topology creates; servers run inside them and are killed by
PID before the namespaces go. No timing is asserted here (tests/bench measures speed): waits are generous
and bounded, and a wait that runs out is a failure of correctness.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from hacontrol.adapters.network import Network
from hacontrol.adapters.network.namespace import open_socket
from hacontrol.agent.protocols import AdapterError, DeadlineExceeded, DuplicateAddress, ManagedAddress
from hacontrol.lab.netns import Member, Topology, list_namespaces, sweep, topology

pytestmark = pytest.mark.netns

PORT = 3260
OTHER_PORT = 3261  # not an iSCSI port: release() leaves its connections alone
WAIT_S = 10.0  # generous bound for anything that should happen "at once"
IFA_F_TENTATIVE, IFA_F_DADFAILED = 0x40, 0x08
_counter = itertools.count()

# A TCP server that greets each connection with its host's name, then holds it until the peer closes.
SERVER = r"""
import socket, sys, threading
name, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET if mode == "v4" else socket.AF_INET6
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if mode == "v6" else 0)
srv.bind(("0.0.0.0" if mode == "v4" else "::", port))
srv.listen(64)
print("ready", flush=True)
def serve(conn):
    try:
        conn.sendall(name.encode() + b"\n")
        while conn.recv(4096):
            pass
    except OSError:
        pass
    finally:
        conn.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class Servers:
    """Servers started inside member namespaces; stop() kills exactly the PIDs it started."""

    def __init__(self, topo: Topology):
        self.topo = topo
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, member: str, port: int = PORT, mode: str = "dual") -> None:
        ns = self.topo.members[member].netns
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, member, str(port), mode],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], WAIT_S)
        assert ready and proc.stdout.readline().strip() == "ready", f"server in {ns} did not start"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=WAIT_S)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()


@pytest.fixture
def topo() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"hcn{os.getpid() % 10000}{next(_counter)}"
    sweep(prefix)
    with topology(prefix, ["a", "b", "client"]) as t:
        yield t
    assert not [n for n in list_namespaces() if n.startswith(prefix + "-")], "namespaces left behind"


@pytest.fixture
def servers(topo: Topology) -> Iterator[Servers]:
    s = Servers(topo)
    try:
        yield s
    finally:
        s.stop()


def network(member: Member, **kwargs: object) -> Network:
    settings: dict = {"garp_count": 3, "garp_interval_s": 0.02, "dad_timeout_s": 0.1, "iscsi_ports": (PORT,)}
    settings.update(kwargs)
    return Network(netns=member.netns, **settings)


def vip_for(topo: Topology, family: str, n: int = 1) -> ManagedAddress:
    if family == "v4":
        return ManagedAddress(topo.address(n), "eth0")
    assert topo.ipv6_network is not None
    return ManagedAddress(ipaddress.IPv6Interface(f"{topo.ipv6_network[0xFF00 + n]}/64"), "eth0")


def deadline(seconds: float = WAIT_S) -> float:
    return time.monotonic() + seconds


def addresses(member: Member) -> set[tuple[str, str, int]]:
    """(interface, address/prefix, flags) of everything configured in a member's namespace."""
    with IPRoute(netns=member.netns, flags=0) as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        return {(names[m["index"]], f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}", m["flags"])
                for m in ipr.get_addr()}


def neighbour_mac(member: Member, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    with IPRoute(netns=member.netns, flags=0) as ipr:
        for entry in ipr.get_neighbours():
            if entry.get_attr("NDA_DST") == str(ip):
                return entry.get_attr("NDA_LLADDR")
    return None


def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.01)
    pytest.fail(f"gave up after {WAIT_S} s waiting for {what}")


def connect(member: Member, vip: ManagedAddress, port: int = PORT) -> socket.socket:
    ip = vip.address.ip
    sock = open_socket(member.netns, socket.AF_INET if ip.version == 4 else socket.AF_INET6, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    sock.connect((str(ip), port))
    return sock


def greeting(member: Member, vip: ManagedAddress, port: int = PORT) -> str:
    with connect(member, vip, port) as sock:
        return sock.makefile().readline().strip()


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_claim_announce_release_are_idempotent(topo: Topology, family: str) -> None:
    a = topo.members["a"]
    net, vip = network(a), vip_for(topo, family)
    before = addresses(a)
    assert net.present([vip]) == frozenset()

    net.claim(vip, deadline())
    net.claim(vip, deadline())  # held already: announces again, adds nothing
    net.announce(vip, deadline())
    assert net.present([vip]) == {vip.key}
    added = addresses(a) - before
    assert [(ifname, addr) for ifname, addr, _ in added] == [("eth0", vip.key)]
    (_, _, flags), = added
    assert not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED), "the address must be usable at once"

    net.release(vip, deadline())
    net.release(vip, deadline())
    assert net.present([vip]) == frozenset()
    assert addresses(a) == before
    with pytest.raises(AdapterError, match="not configured"):
        net.announce(vip, deadline())  # never announce an address we do not hold


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_move_switches_client_neighbour_and_reaches_new_owner(topo: Topology, servers: Servers,
                                                              family: str) -> None:
    a, b, client = (topo.members[n] for n in ("a", "b", "client"))
    net_a, net_b, vip = network(a), network(b), vip_for(topo, family)
    servers.start("a")
    servers.start("b")

    net_a.claim(vip, deadline())
    assert greeting(client, vip) == "a"
    assert neighbour_mac(client, vip.address.ip) == a.mac

    net_a.release(vip, deadline())
    net_b.claim(vip, deadline())
    # The announcement alone moves the client's entry: nothing was sent to the VIP since the move.
    wait_for(lambda: neighbour_mac(client, vip.address.ip) == b.mac, "the client's neighbour entry to show b")
    assert greeting(client, vip) == "b"

    net_b.release(vip, deadline())
    net_a.claim(vip, deadline())
    wait_for(lambda: neighbour_mac(client, vip.address.ip) == a.mac, "the client's neighbour entry to show a")
    assert greeting(client, vip) == "a"


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_without_announcements_the_client_keeps_the_stale_neighbour(topo: Topology, servers: Servers,
                                                                    family: str) -> None:
    """The control for the test above: with garp_count=0 nothing tells the client the owner moved."""
    a, b, client = (topo.members[n] for n in ("a", "b", "client"))
    vip = vip_for(topo, family)
    servers.start("a")
    network(a).claim(vip, deadline())
    assert greeting(client, vip) == "a"
    network(a).release(vip, deadline())
    network(b, garp_count=0).claim(vip, deadline())
    time.sleep(0.5)  # ample time for any announcement to have arrived; none was sent
    assert neighbour_mac(client, vip.address.ip) == a.mac


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_planned_claim_skips_the_duplicate_check_but_still_adds_and_announces(topo: Topology, servers: Servers,
                                                                             family: str) -> None:
    """After a hand-over the peer reported the address released: no probe wait, same result."""
    a, b, client = (topo.members[n] for n in ("a", "b", "client"))
    vip = vip_for(topo, family)
    servers.start("a")
    servers.start("b")
    network(a).claim(vip, deadline())
    assert greeting(client, vip) == "a"  # the client now has a neighbour entry pointing at a
    network(a).release(vip, deadline())
    network(b).claim(vip, deadline(), check_duplicates=False)
    assert network(b).present([vip]) == {vip.key}
    wait_for(lambda: neighbour_mac(client, vip.address.ip) == b.mac, "the announcement to reach the client")
    assert greeting(client, vip) == "b"


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_duplicate_address_names_the_holder_and_changes_nothing(topo: Topology, family: str) -> None:
    a, b = topo.members["a"], topo.members["b"]
    vip = vip_for(topo, family)
    network(a).claim(vip, deadline())
    before_b = addresses(b)

    with pytest.raises(DuplicateAddress) as caught:
        network(b).claim(vip, deadline())
    assert caught.value.owner_mac == a.mac
    assert caught.value.address == vip.key
    assert addresses(b) == before_b
    assert network(a).present([vip]) == {vip.key}

    network(a).release(vip, deadline())
    network(b).claim(vip, deadline())  # free again: the check passes
    assert network(b).present([vip]) == {vip.key}


@pytest.mark.parametrize(("family", "listener"), [("v4", "v4"), ("v4", "dual"), ("v6", "v6")])
def test_release_resets_established_connections(topo: Topology, servers: Servers, family: str,
                                                listener: str) -> None:
    """The client sees a RST at once instead of a connection that hangs until TCP gives up."""
    a, client = topo.members["a"], topo.members["client"]
    vip = vip_for(topo, family)
    servers.start("a", PORT, listener)
    servers.start("a", OTHER_PORT, listener)
    network(a).claim(vip, deadline())
    iscsi = connect(client, vip, PORT)
    other = connect(client, vip, OTHER_PORT)
    try:
        assert iscsi.recv(64) == b"a\n"
        assert other.recv(64) == b"a\n"

        network(a).release(vip, deadline())
        with pytest.raises(ConnectionResetError):
            iscsi.recv(64)  # blocks up to WAIT_S if no RST came
        other.settimeout(0.5)
        with pytest.raises(TimeoutError):
            other.recv(64)  # a port outside iscsi_ports is not ours to cut
    finally:
        iscsi.close()
        other.close()


def test_monitor_never_sees_the_address_on_both_controllers(topo: Topology) -> None:
    a, b = topo.members["a"], topo.members["b"]
    nets = {"a": network(a), "b": network(b)}
    vip = vip_for(topo, "v4")
    samples: list[tuple[str, ...]] = []
    both: list[tuple[str, ...]] = []
    done = threading.Event()

    def held(name: str) -> bool:
        return vip.key in nets[name].present([vip])

    def monitor() -> None:
        for n in itertools.count():
            if done.is_set() or n > 100_000:
                return
            # first, other, first again: if the first holds it before and after the other was seen
            # holding it, both held it at the moment of the middle sample.
            first, other = ("a", "b") if n % 2 == 0 else ("b", "a")
            seen = (held(first), held(other), held(first))
            samples.append(tuple(name for name, h in zip((first, other), seen[:2], strict=True) if h))
            if all(seen):
                both.append((first, other))

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        holder = "a"
        nets[holder].claim(vip, deadline())
        for _ in range(8):
            successor = "b" if holder == "a" else "a"
            nets[holder].release(vip, deadline())
            nets[successor].claim(vip, deadline())
            holder = successor
    finally:
        done.set()
        watcher.join(WAIT_S)
    assert not watcher.is_alive()
    assert both == []
    assert {("a",), ("b",)} <= set(samples), "the monitor never saw one of the holders: it did not sample"


def test_bad_inputs_raise_and_change_nothing(topo: Topology) -> None:
    a, b = topo.members["a"], topo.members["b"]
    net = network(a)
    before = addresses(a)

    missing = ManagedAddress(topo.address(1), "eth9")
    for op in (net.claim, net.release, net.announce):
        with pytest.raises(AdapterError, match=r"interface eth9 does not exist in network namespace"):
            op(missing, deadline())
    assert net.present([missing]) == frozenset()

    for outside in ("192.0.2.10/24", "2001:db8::10/64"):
        with pytest.raises(AdapterError, match=r"no address of eth0 is in .*its IPv\d addresses: "):
            net.claim(ManagedAddress(ipaddress.ip_interface(outside), "eth0"), deadline())

    vip = vip_for(topo, "v4")
    with pytest.raises(DeadlineExceeded):
        net.claim(vip, time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded, match="duplicate-address check needs"):
        net.claim(vip, time.monotonic() + 0.01)  # less than the DAD window
    assert addresses(a) == before

    topo.link("b", up=False)
    with pytest.raises(AdapterError, match="eth0 is down"):
        network(b).claim(vip, deadline())
    topo.link("b", up=True)

    gone = f"{topo.prefix}-nope"
    with pytest.raises(AdapterError, match=f"network namespace {gone} does not exist"):
        Network(netns=gone).present([vip])
    assert gone not in list_namespaces(), "a missing namespace must never be created"
