"""A simulated world for two agents: a ZooKeeper-like coordinator, shared disks with SCSI-3 PR, addresses.

It models what the safety argument depends on, with the semantics of the real
systems: sessions that the server expires ``session_timeout_s`` after it last
heard from a client, ephemeral znodes deleted at expiry, an epoch counter
advanced by compare-and-set, persistent-reservation registrations and a
WRITE EXCLUSIVE – REGISTRANTS ONLY reservation that refuse writes from
unregistered controllers, and addresses that a duplicate-address check sees.
Time is a number the test advances; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hacontrol.core.model import PeerReport


def pr_key(node_id: int, epoch: int) -> int:
    """The reservation key of a controller: its id in the upper 32 bits, the epoch in the lower 32."""
    return (node_id << 32) | (epoch & 0xFFFFFFFF)


def key_parts(key: int) -> tuple[int, int]:
    return key >> 32, key & 0xFFFFFFFF


@dataclass
class Session:
    session_id: int
    last_heard: float
    alive: bool = True


@dataclass
class Intent:
    intent_id: str
    target: str
    deadline: float
    state: str = "pending"
    reason: str = ""


@dataclass
class Coordinator:
    """The ensemble, seen as one linearizable store (what ZooKeeper gives its clients)."""

    session_timeout_s: float
    sessions: dict[int, Session] = field(default_factory=dict)
    leader: tuple[str, int, int] | None = None  # node, epoch, owner session
    epoch: int = 0
    members: dict[str, tuple[int, PeerReport]] = field(default_factory=dict)  # node -> (owner session, report)
    alive_znodes: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (owner session, version)
    switchover: Intent | None = None
    maintenance: bool = False
    _next_session: int = 1
    history: list[tuple[float, str, int]] = field(default_factory=list)  # (time, leader node, epoch)

    def open_session(self, now: float) -> int:
        sid = self._next_session
        self._next_session += 1
        self.sessions[sid] = Session(sid, now)
        return sid

    def touch(self, sid: int, now: float) -> bool:
        s = self.sessions.get(sid)
        if s is None or not s.alive:
            return False
        s.last_heard = now
        return True

    def expire(self, now: float) -> None:
        for s in self.sessions.values():
            if s.alive and now >= s.last_heard + self.session_timeout_s:
                self._end(s)

    def close(self, sid: int) -> None:
        s = self.sessions.get(sid)
        if s is not None and s.alive:
            self._end(s)

    def _end(self, s: Session) -> None:
        s.alive = False
        if self.leader is not None and self.leader[2] == s.session_id:
            self.leader = None
        for node, (owner, _) in list(self.members.items()):
            if owner == s.session_id:
                del self.members[node]
        for node, (owner, _) in list(self.alive_znodes.items()):
            if owner == s.session_id:
                del self.alive_znodes[node]

    def touch_alive(self, node: str, sid: int) -> None:
        """The leader's heartbeat through ZooKeeper: rewrite its ephemeral alive znode (a new version)."""
        owner, version = self.alive_znodes.get(node, (sid, 0))
        self.alive_znodes[node] = (sid, version + 1 if owner == sid else 1)

    def alive(self, sid: int | None) -> bool:
        return sid is not None and sid in self.sessions and self.sessions[sid].alive

    def claim(self, node: str, sid: int, expected_epoch: int, now: float) -> bool:
        """Create the leader znode and advance the epoch, both or neither (a ZooKeeper multi)."""
        if not self.alive(sid) or self.leader is not None or self.epoch != expected_epoch:
            return False
        self.epoch += 1
        self.leader = (node, self.epoch, sid)
        self.history.append((now, node, self.epoch))
        return True

    def take_over(self, node: str, sid: int, expected_epoch: int, stale_node: str, now: float) -> bool:
        """Delete a stale leader znode, create ours and advance the epoch, all or nothing (one multi)."""
        if not self.alive(sid) or self.epoch != expected_epoch:
            return False
        if self.leader is not None and (self.leader[0] != stale_node or self.leader[1] != expected_epoch):
            return False
        self.epoch += 1
        self.leader = (node, self.epoch, sid)
        self.history.append((now, node, self.epoch))
        return True

    def release(self, sid: int, epoch: int) -> bool:
        if self.leader is not None and self.leader[2] == sid and self.leader[1] == epoch:
            self.leader = None
            return True
        return self.leader is None or self.leader[2] != sid


class ReservationConflict(Exception):
    pass


@dataclass
class Disk:
    """One shared disk with SCSI-3 persistent reservations (type 5: WRITE EXCLUSIVE – REGISTRANTS ONLY)."""

    registrations: dict[str, int] = field(default_factory=dict)  # controller (I_T nexus) -> key
    holder: str | None = None  # controller holding the reservation
    writes: list[tuple[float, str]] = field(default_factory=list)

    def register(self, who: str, key: int) -> None:
        """REGISTER AND IGNORE EXISTING KEY (key 0 unregisters, which also drops a held reservation)."""
        if key == 0:
            self.registrations.pop(who, None)
            if self.holder == who:
                self.holder = None
            return
        self.registrations[who] = key

    def reserve(self, who: str) -> None:
        if who not in self.registrations:
            raise ReservationConflict("RESERVE from an unregistered nexus")
        if self.holder not in (None, who):
            raise ReservationConflict("reserved by another nexus")
        self.holder = who

    def preempt(self, who: str, victim_key: int) -> None:
        """PREEMPT: remove every registration with ``victim_key``; take the reservation if it was theirs."""
        if who not in self.registrations:
            raise ReservationConflict("PREEMPT from an unregistered nexus")
        victims = [w for w, k in self.registrations.items() if k == victim_key and w != who]
        for w in victims:
            del self.registrations[w]
            if self.holder == w:
                self.holder = who
        if self.holder is None:
            self.holder = who

    def write_allowed(self, who: str) -> bool:
        return self.holder is None or who in self.registrations

    def holder_key(self) -> int | None:
        return self.registrations.get(self.holder) if self.holder else None
