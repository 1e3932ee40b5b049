"""This controller's iSCSI connections, published in its member report so that a survivor can tickle them
(hacontrol.adapters.network.tickle) after it adopted this controller's portal addresses."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import structlog

from hacontrol.adapters.network.tickle import Connection, connections_on, parse_connections, send_tickles
from hacontrol.agent.protocols import AdapterError

log = structlog.get_logger("hacontrol.connections")


class ConnectionWatch:
    """Lists the established connections on our own portal addresses at most every ``interval_s``; reports
    whether the list changed since the last publish (then the member report must go out again)."""

    def __init__(self, netns: str | None, addresses: Collection[str], ports: Collection[int], *,
                 interval_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 lister: Callable[..., list[Connection]] = connections_on):
        self.netns, self.addresses, self.ports = netns, tuple(addresses), tuple(ports)
        self.interval_s, self.clock, self.lister = interval_s, clock, lister
        self.current: list[Connection] = []
        self._checked_at = float("-inf")

    def poll(self) -> bool:
        now = self.clock()
        if now - self._checked_at < self.interval_s:
            return False
        self._checked_at = now
        try:
            found = self.lister(self.netns, self.addresses, self.ports, now + 0.5)
        except (AdapterError, OSError) as exc:  # never let this stop the loop: keep the last list
            log.warning("connections_unreadable", error=str(exc))
            return False
        changed = found != self.current
        self.current = found
        return changed

    def report(self) -> dict[str, list[list[object]]]:
        return {"iscsi_connections": [list(c) for c in self.current]}


def tickle_peer(netns: str | None, published: object,
                sender: Callable[[str | None, list[Connection]], int] = send_tickles) -> str:
    """Tickle the connections the peer published last; returns a detail line for the step's log."""
    connections = parse_connections(published)
    if not connections:
        return "no peer connections to tickle"
    sent = sender(netns, connections)
    log.info("tickled_peer_connections", connections=len(connections), segments=sent)
    return f"tickled {len(connections)} peer connection(s)"
