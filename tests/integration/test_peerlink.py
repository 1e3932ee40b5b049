"""The peer link over real UDP between two network namespaces: heartbeats on both paths, a path dropped by
nftables, a stranger's key, and a promise asked for and given. Waits are bounded and generous; no timing is
asserted (tests/bench measures speed)."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from hacontrol.adapters.peerlink import LinkState, Path, PeerLink
from hacontrol.core.model import Role
from hacontrol.core.peer import Advert
from hacontrol.lab.netns import Topology

pytestmark = pytest.mark.netns

KEY = b"integration-peer-link-key"
PORT = 7405
SESSION_S = 2.0
WAIT_S = 10.0
_counter = itertools.count()

ASKING = Advert(Role.ACTIVE, 3, leading=True, serving=True, want_promise=True, may_promise=False)
STANDING_BY = Advert(Role.STANDBY, 3, leading=False, serving=False, want_promise=False, may_promise=True)


@pytest.fixture
def wire() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    topo = Topology(f"hpl{os.getpid() % 10000}{next(_counter)}").create(["a", "b"])
    try:
        for i, name in enumerate(("a", "b"), start=1):  # path 1: a second network on the same wire
            ns = topo.members[name].netns
            subprocess.run(["ip", "-n", ns, "addr", "add", f"10.77.1.{i}/24", "dev", "eth0"], check=True)
        yield topo
    finally:
        topo.close()


def link(topo: Topology, me: str, other: str, key: bytes = KEY) -> PeerLink:
    ids = {"a": 1, "b": 2}
    paths = [Path(str(topo.members[me].address.ip), str(topo.members[other].address.ip), PORT),
             Path(f"10.77.1.{ids[me]}", f"10.77.1.{ids[other]}", PORT)]
    state = LinkState(ids[me], ids[other], 2, key, time.time_ns(), promise_s=SESSION_S, min_promise_s=SESSION_S)
    return PeerLink(paths, state, 0.05, netns=topo.members[me].netns)


def wait_for(what: str, predicate: Callable[[], object]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


def alive(lnk: PeerLink, fresh_s: float = 0.5) -> list[bool]:
    now = time.monotonic()
    return [t is not None and now - t < fresh_s for t in lnk.view().heard]


def nft(topo: Topology, member: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", topo.members[member].netns, "nft", "-f", "-"], input=script, text=True,
                   check=True)


def test_heartbeats_on_both_paths_and_a_dropped_path_goes_silent_alone(wire):
    a, b = link(wire, "a", "b"), link(wire, "b", "a")
    a.advertise(ASKING)
    b.advertise(STANDING_BY)
    a.start()
    b.start()
    try:
        wait_for("each hears the other on both paths", lambda: alive(a) == [True, True] == alive(b))
        nft(wire, "b", "table inet hpl {\n chain in {\n type filter hook input priority 0;\n"
                       f" ip saddr 10.77.1.1 udp dport {PORT} drop\n }}\n}}\n")
        wait_for("path 1 silent at b, path 0 still heard", lambda: alive(b) == [True, False])
        assert alive(a) == [True, True]  # b -> a still flows on both paths
        view = b.view()
        assert view.peer_role is Role.ACTIVE and view.leading_epoch == 3
        nft(wire, "b", "delete table inet hpl")
        wait_for("path 1 heard again", lambda: alive(b) == [True, True])
        report = a.report()
        assert [p["error"] for p in report["paths"]] == ["", ""]
        assert report["counters"]["accepted"] > 0 and report["counters"]["bad"] == 0
    finally:
        a.stop()
        b.stop()


def test_a_promise_is_asked_for_and_given_across_the_wire(wire):
    a, b = link(wire, "a", "b"), link(wire, "b", "a")
    a.advertise(ASKING)
    b.advertise(STANDING_BY)
    a.start()
    b.start()
    try:
        wait_for("a holds b's promise", lambda: a.view().promise_confirmed_at is not None)
        now = time.monotonic()
        assert now - a.view().promise_confirmed_at < WAIT_S
        until = b.stop_promising()
        assert until is not None and until > now  # b promised: it may not claim before this
        assert b.report()["counters"]["promises_given"] >= 1
    finally:
        a.stop()
        b.stop()


def test_heartbeats_under_another_key_are_dropped(wire):
    a, b = link(wire, "a", "b"), link(wire, "b", "a", key=b"someone-elses-cluster-key")
    a.advertise(ASKING)
    b.advertise(STANDING_BY)
    a.start()
    b.start()
    try:
        wait_for("b drops a's heartbeats as unauthenticated", lambda: b.report()["counters"]["bad"] >= 4)
        assert b.view().heard == (None, None) and a.view().heard == (None, None)
    finally:
        a.stop()
        b.stop()


def test_a_path_whose_address_is_missing_reports_why_and_opens_once_it_appears(wire):
    ns = wire.members["a"].netns
    subprocess.run(["ip", "-n", ns, "addr", "del", "10.77.1.1/24", "dev", "eth0"], check=True)
    a, b = link(wire, "a", "b"), link(wire, "b", "a")
    a.advertise(ASKING)
    b.advertise(STANDING_BY)
    a.start()
    b.start()
    try:
        wait_for("path 0 works", lambda: alive(b)[0])
        assert not alive(b)[1]
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.77.1.1/24", "dev", "eth0"], check=True)
        wait_for("path 1 works once the address is there", lambda: alive(b) == [True, True])
    finally:
        a.stop()
        b.stop()
