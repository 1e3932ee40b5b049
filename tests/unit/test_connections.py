"""ConnectionWatch: lists at most every interval, says when the list changed; tickle_peer: uses the peer's
last published list, validated."""

from __future__ import annotations

from hacontrol.agent.connections import ConnectionWatch, tickle_peer
from hacontrol.agent.protocols import AdapterError


def test_watch_polls_at_most_every_interval_and_reports_changes():
    now = [0.0]
    found = [[("192.0.2.21", 3260, "192.0.2.50", 40001)]]
    calls = []

    def lister(netns, addresses, ports, deadline):
        calls.append((netns, tuple(addresses), tuple(ports)))
        if found[0] is None:
            raise AdapterError("sock_diag failed")
        return found[0]

    w = ConnectionWatch(None, ["192.0.2.21"], [3260], interval_s=2.0, clock=lambda: now[0], lister=lister)
    assert w.poll() is True and w.report() == {"iscsi_connections": [["192.0.2.21", 3260, "192.0.2.50", 40001]]}
    now[0] = 1.0
    assert w.poll() is False and len(calls) == 1  # too soon
    now[0] = 2.5
    assert w.poll() is False and len(calls) == 2  # same list
    found[0] = None
    now[0] = 5.0
    assert w.poll() is False and w.current  # unreadable: keep the last list
    found[0] = []
    now[0] = 8.0
    assert w.poll() is True and w.report() == {"iscsi_connections": []}


def test_tickle_peer_sends_the_published_list_only():
    sent = []
    detail = tickle_peer(None, [["192.0.2.22", 3260, "192.0.2.50", 40002], ["bad"]],
                         sender=lambda netns, conns: sent.append(conns) or 2 * len(conns))
    assert sent == [[("192.0.2.22", 3260, "192.0.2.50", 40002)]] and detail == "tickled 1 peer connection(s)"
    assert tickle_peer(None, None, sender=lambda *a: 1 / 0) == "no peer connections to tickle"
