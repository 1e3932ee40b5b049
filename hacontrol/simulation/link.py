"""The peer link's network in the model: paths that lose, delay, duplicate and replay datagrams.

The agents' ends of the link are the real :class:`~hacontrol.adapters.peerlink.protocol.LinkState` (wire
format, authentication, replay protection, promises); only the sockets are simulated here. A datagram for a
frozen agent waits in its socket buffer and is read when it thaws (as the kernel does); one for a powered-off
controller, or one whose agent is not running, is lost.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

PATHS = 2
KEY = b"model-peer-link-key"
CAPTURED_KEPT = 64


@dataclass
class PathFaults:
    cut: bool = False
    loss: float = 0.0  # probability that a datagram is dropped
    delay_s: float = 0.0


@dataclass(order=True)
class Datagram:
    deliver_at: float
    seq: int  # tie-break: datagrams sent earlier are delivered first
    dst: str = field(compare=False)
    path: int = field(compare=False)
    data: bytes = field(compare=False)


@dataclass
class LinkNet:
    paths: list[PathFaults] = field(default_factory=lambda: [PathFaults() for _ in range(PATHS)])
    duplicate: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    in_flight: list[Datagram] = field(default_factory=list)
    captured: list[Datagram] = field(default_factory=list)  # what an attacker on the wire could replay
    _seq: int = 0

    def send(self, dst: str, path: int, data: bytes, now: float) -> None:
        f = self.paths[path]
        copies = 2 if self.duplicate else 1
        for _ in range(copies):
            if f.cut or (f.loss and self.rng.random() < f.loss):
                continue
            self._seq += 1
            d = Datagram(now + f.delay_s, self._seq, dst, path, data)
            self.in_flight.append(d)
            self.captured.append(d)
        del self.captured[:-CAPTURED_KEPT]

    def replay(self, count: int, now: float) -> None:
        """Send ``count`` captured datagrams again, oldest first (an attacker, or a confused switch)."""
        for old in self.captured[:count]:
            self._seq += 1
            self.in_flight.append(Datagram(now, self._seq, old.dst, old.path, old.data))

    def deliver(self, now: float, can_read: Callable[[str], bool | None],
                receive: Callable[[str, int, bytes], None]) -> None:
        """Hand every due datagram to its receiver. ``can_read``: True (running), False (frozen: keep it
        queued), None (off or no agent: lost). Replies sent while delivering are delivered in the same pass
        when they are due (bounded)."""
        for _ in range(100):
            due = sorted(d for d in self.in_flight if d.deliver_at <= now)
            if not due:
                return
            kept = [d for d in self.in_flight if d.deliver_at > now]
            for d in due:
                state = can_read(d.dst)
                if state is False:
                    kept.append(d)
            self.in_flight = kept
            delivered = [d for d in due if can_read(d.dst)]
            if not delivered:
                return
            for d in delivered:
                receive(d.dst, d.path, d.data)

    def heal(self) -> None:
        self.paths = [PathFaults() for _ in range(PATHS)]
        self.duplicate = False
