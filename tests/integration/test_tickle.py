"""Tickle ACKs against real sockets in namespaces: controller ``a`` holds a client connection on a portal
address and goes silent; ``b`` adopts the address (duplicate check, announcements) and tickles the connection
``a`` had published; the client's idle connection is reset at once, where without the tickle nothing would
ever reach it. Correctness only (tests/bench and the rig measure time)."""

from __future__ import annotations

import ipaddress
import struct
import subprocess

import pytest

from hacontrol.adapters.network.frames import internet_checksum
from hacontrol.adapters.network.tickle import ack_segment, connections_on, parse_connections, send_tickles
from tests.integration.test_network import (  # noqa: F401 - fixtures
    PORT,
    Servers,
    connect,
    deadline,
    network,
    servers,
    topo,
    vip_for,
)

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_a_silent_controllers_connection_is_reset_by_the_survivors_tickle(topo, servers: Servers,  # noqa: F811
                                                                         family: str) -> None:
    a, b, client = (topo.members[n] for n in ("a", "b", "client"))
    vip = vip_for(topo, family)
    servers.start("a")
    network(a).claim(vip, deadline())
    sock = connect(client, vip)
    assert sock.makefile().readline().strip() == "a"

    published = connections_on(a.netns, [str(vip.address.ip)], [PORT], deadline())
    local_port = sock.getsockname()[1]
    assert [c for c in published if c[3] == local_port] == [(str(vip.address.ip), PORT, published[0][2], local_port)]

    subprocess.run(["ip", "-n", a.netns, "link", "set", "eth0", "down"], check=True)  # a dies: sends nothing
    network(b).claim(vip, deadline())  # duplicate check passes (a is silent), address added, announced
    sock.settimeout(1.0)
    with pytest.raises(TimeoutError):
        sock.recv(1)  # an idle connection: nothing tells the client that a is gone
    sent = send_tickles(b.netns, parse_connections([list(c) for c in published]))
    assert sent == 2 * len(published)
    sock.settimeout(10.0)
    with pytest.raises(ConnectionResetError):
        sock.recv(1)
    sock.close()


def test_tickles_skip_addresses_that_are_not_ours_and_bad_entries(topo) -> None:  # noqa: F811
    b = topo.members["b"]
    assert send_tickles(b.netns, [("192.0.2.77", PORT, "192.0.2.1", 40000)]) == 0  # not local: nothing sent
    assert parse_connections([["192.0.2.7", 3260, "192.0.2.1", 4000], ["x", 1, "y", 2], [1, 2], "junk",
                              ["192.0.2.7", 0, "192.0.2.1", 4000]]) == [("192.0.2.7", 3260, "192.0.2.1", 4000)]
    assert parse_connections({"not": "a list"}) == []


def test_ack_segment_checksum_verifies():
    for src, dst in (("192.0.2.7", "192.0.2.1"), ("2001:db8::7", "2001:db8::1")):
        seg = ack_segment(src, 3260, dst, 51000)
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        pseudo = (s.packed + d.packed + struct.pack("!BBH", 0, 6, len(seg)) if s.version == 4 else
                  s.packed + d.packed + struct.pack("!I3xB", len(seg), 6))
        assert internet_checksum(pseudo + seg) == 0 and seg[13] == 0x10 and len(seg) == 20
    with pytest.raises(ValueError, match="same IP version"):
        ack_segment("192.0.2.7", 1, "2001:db8::1", 2)
