"""The peer link's wire format and bookkeeping: no sockets, no threads, no clock of its own (``now`` is passed).

The socket adapter (:mod:`hacontrol.adapters.peerlink.link`) and the hypothesis model
(:mod:`hacontrol.simulation`) run this same code, so what the model proves about lost, late, duplicated and
replayed heartbeats is what the agent does.

A heartbeat is 52 bytes plus a 16-byte HMAC-SHA256 tag over them, keyed by ``peer_link.key``; network byte order::

    magic "HAPL" | version u8 | sender node id u16 | path u8 | incarnation u64 | seq u64 | role u8 | flags u8 |
    epoch u32 | ack incarnation u64 | ack seq u64 | promise ms u32 | pad u16 | tag [16]

``incarnation`` is fixed for one agent process (its start time in ns: a restarted agent's is larger), ``seq``
grows by one for every heartbeat on any path. A receiver keeps, per path, the newest (incarnation, seq) it
accepted and drops anything not newer, so a duplicate, a late packet overtaken by a newer one, or a replayed
capture never counts as the peer being alive now, and a replay can never renew a promise: the promise's
lease is counted from the send time of the heartbeat it answers (the requester's own clock), which a replay
cannot move forward.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from enum import IntFlag

from hacontrol.core.model import PeerLinkView, Role
from hacontrol.core.peer import Advert

MAGIC = b"HAPL"
VERSION = 1
BODY = struct.Struct("!4sBHBQQBBIQQIH")
TAG_LEN = 16
SIZE = BODY.size + TAG_LEN
SENT_KEPT = 512  # send times remembered for answering promises (several seconds of heartbeats)

ROLES = tuple(Role)


class Flag(IntFlag):
    LEADING = 1  # holds the active role now (ZooKeeper lease or failsafe lease)
    SERVING = 2  # its data path accepts I/O
    WANT_PROMISE = 4  # its ZooKeeper lease is not fresh: it asks the receiver not to claim or fence
    PROMISE = 8  # the ack fields name a heartbeat answered with a promise of ``promise_ms``


class BadPacket(ValueError):
    """Not a heartbeat of this cluster (short, other magic or version, wrong tag)."""


@dataclass(frozen=True)
class Heartbeat:
    node_id: int
    path: int
    incarnation: int
    seq: int
    role: Role
    flags: Flag
    epoch: int
    ack_incarnation: int = 0
    ack_seq: int = 0
    promise_ms: int = 0


def encode(hb: Heartbeat, key: bytes) -> bytes:
    body = BODY.pack(MAGIC, VERSION, hb.node_id, hb.path, hb.incarnation, hb.seq, ROLES.index(hb.role),
                     int(hb.flags), hb.epoch & 0xFFFFFFFF, hb.ack_incarnation, hb.ack_seq, hb.promise_ms, 0)
    return body + hmac.new(key, body, hashlib.sha256).digest()[:TAG_LEN]


def decode(data: bytes, key: bytes) -> Heartbeat:
    if len(data) != SIZE:
        raise BadPacket(f"{len(data)} bytes, a heartbeat has {SIZE}")
    body, tag = data[:BODY.size], data[BODY.size:]
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:TAG_LEN], tag):
        raise BadPacket("authentication tag does not match (another cluster, or peer_link.key differs)")
    magic, version, node_id, path, inc, seq, role, flags, epoch, ack_inc, ack_seq, promise_ms, _ = BODY.unpack(body)
    if magic != MAGIC or version != VERSION:
        raise BadPacket(f"magic {magic!r} version {version}")
    if role >= len(ROLES):
        raise BadPacket(f"unknown role code {role}")
    return Heartbeat(node_id, path, inc, seq, ROLES[role], Flag(flags & 0xF), epoch, ack_inc, ack_seq, promise_ms)


@dataclass
class Counters:
    sent: int = 0
    accepted: int = 0
    bad: int = 0  # undecodable or failed authentication
    foreign: int = 0  # a valid tag but another sender id or path than expected
    stale: int = 0  # duplicate, overtaken or replayed
    promises_given: int = 0
    promises_taken: int = 0
    promises_released: int = 0  # promises ended early: the peer stepped down
    longest_gap_s: float = 0.0  # the longest silence on a path that ended with a heartbeat of the same process:
    # what a live peer's stalls (a busy or starved host) look like here, to set peer_dead_after_s above


@dataclass
class LinkState:
    """One agent's side of the link. Not thread-safe: the socket adapter holds a lock around every call."""

    node_id: int
    peer_id: int
    paths: int
    key: bytes
    incarnation: int
    promise_s: float  # how long a promise we give lasts (the session timeout)
    min_promise_s: float  # a promise we take must last at least this long (our session timeout)
    stale_incarnation_s: float = 2.0  # an older incarnation is accepted only after the newer was silent this long
    advert: Advert | None = None
    counters: Counters = field(default_factory=Counters)
    _seq: int = 0
    _sent_at: dict[int, float] = field(default_factory=dict)
    _peer_incarnation: int = 0
    _newest: dict[int, int] = field(default_factory=dict)  # path -> newest seq accepted (this incarnation)
    _heard: dict[int, float] = field(default_factory=dict)  # path -> when
    _last: Heartbeat | None = None
    _leading_epoch: int = 0
    _ack: tuple[int, int] = (0, 0)  # the peer's newest (incarnation, seq) we accepted
    _promised_for: tuple[int, int] = (0, 0)  # the peer heartbeat our newest promise answered
    _promised_until: float | None = None
    _withheld: bool = False
    _confirmed_at: float | None = None
    _awake_at: float | None = None
    _listening_since: float | None = None

    # --- sending --------------------------------------------------------------------------------

    def advertise(self, advert: Advert) -> None:
        """The agent's state after a tick; it also ends a withholding that stop_promising started."""
        self.advert = advert
        self._withheld = False

    def heartbeat(self, path: int, now: float) -> bytes:
        a = self.advert
        flags = Flag(0)
        role, epoch = Role.STARTING, 0
        if a is not None:
            role, epoch = a.role, a.epoch
            flags |= (Flag.LEADING if a.leading else 0) | (Flag.SERVING if a.serving else 0)
            flags |= Flag.WANT_PROMISE if a.want_promise else 0
        promise_ms = 0
        if self._ack == self._promised_for and self._ack != (0, 0):
            flags |= Flag.PROMISE
            promise_ms = int(self.promise_s * 1000)
        self._seq += 1
        self._sent_at[self._seq] = now
        if len(self._sent_at) > SENT_KEPT:
            del self._sent_at[min(self._sent_at)]
        self.counters.sent += 1
        hb = Heartbeat(self.node_id, path, self.incarnation, self._seq, role, flags, epoch, *self._ack, promise_ms)
        return encode(hb, self.key)

    # --- receiving ------------------------------------------------------------------------------

    def receive(self, data: bytes, path: int, now: float) -> bytes | None:
        """Take one datagram that arrived on ``path``; return a heartbeat to send back at once (a promise), or
        None."""
        try:
            hb = decode(data, self.key)
        except BadPacket:
            self.counters.bad += 1
            return None
        if hb.node_id != self.peer_id or hb.path != path or path >= self.paths:
            self.counters.foreign += 1
            return None
        if not self._fresh(hb, now):
            self.counters.stale += 1
            return None
        self.counters.accepted += 1
        previous = self._heard.get(path)
        if previous is not None and path in self._newest:  # the same incarnation heard before on this path
            self.counters.longest_gap_s = max(self.counters.longest_gap_s, round(now - previous, 3))
        self._newest[path] = hb.seq
        self._heard[path] = now
        self._last = hb
        self._ack = (hb.incarnation, hb.seq)
        if hb.flags & Flag.LEADING:
            self._leading_epoch = hb.epoch
        self._release_promise(hb)
        self._take_promise(hb)
        if hb.flags & Flag.WANT_PROMISE and self._may_promise():
            until = now + self.promise_s
            self._promised_until = until if self._promised_until is None else max(self._promised_until, until)
            self._promised_for = self._ack
            self.counters.promises_given += 1
            return self.heartbeat(path, now)
        return None

    def _fresh(self, hb: Heartbeat, now: float) -> bool:
        if hb.incarnation > self._peer_incarnation:
            self._adopt_incarnation(hb.incarnation)
            return True
        if hb.incarnation < self._peer_incarnation:
            # An older incarnation: a replay, or a restarted peer whose clock went back. Only the latter once
            # the newer one has been silent for a while (liveness; safety never rests on an incarnation).
            newest = max(self._heard.values(), default=None)
            if newest is not None and now - newest < self.stale_incarnation_s:
                return False
            self._adopt_incarnation(hb.incarnation)
            return True
        return hb.seq > self._newest.get(hb.path, 0)

    def _adopt_incarnation(self, incarnation: int) -> None:
        self._peer_incarnation = incarnation
        self._newest.clear()
        self._leading_epoch = 0

    def _take_promise(self, hb: Heartbeat) -> None:
        """A promise counts from the send time of the heartbeat it answers, if the promiser stands by."""
        if not hb.flags & Flag.PROMISE or hb.ack_incarnation != self.incarnation:
            return
        sent = self._sent_at.get(hb.ack_seq)
        if sent is None or hb.flags & (Flag.LEADING | Flag.SERVING):
            return
        if hb.promise_ms < self.min_promise_s * 1000 - 0.5:
            return
        own_epoch = self.advert.epoch if self.advert is not None else 0
        if hb.epoch > own_epoch:
            return  # the promiser knows a newer epoch than we serve under: not a promise to us
        self.counters.promises_taken += 1
        self._confirmed_at = sent if self._confirmed_at is None else max(self._confirmed_at, sent)

    def _release_promise(self, hb: Heartbeat) -> None:
        """A promise protects a peer that serves without ZooKeeper. When that peer (the same process, in a
        heartbeat sent after the one we answered) says it neither leads nor serves nor asks, it has stepped
        down, e.g. handing over for a planned switchover: nothing is left to protect, and keeping the promise
        would only delay our claim. To serve again it must claim through ZooKeeper like anyone else."""
        if self._promised_until is None or hb.flags & (Flag.LEADING | Flag.SERVING | Flag.WANT_PROMISE):
            return
        inc, seq = self._promised_for
        if hb.incarnation == inc and hb.seq > seq:
            self._promised_until = None
            self.counters.promises_released += 1

    def _may_promise(self) -> bool:
        return self.advert is not None and self.advert.may_promise and not self._withheld

    def awake(self, now: float, max_gap_s: float) -> None:
        """The link's loop ran at ``now``; a gap over ``max_gap_s`` since it last ran (this process starved or
        stopped) restarts the time we have been listening."""
        if self._awake_at is None or now - self._awake_at > max_gap_s:
            self._listening_since = now
        self._awake_at = now

    # --- the agent's side -----------------------------------------------------------------------

    def stop_promising(self, now: float) -> float | None:
        """Give no new promise until the next advertise(); return until when an earlier one still holds."""
        self._withheld = True
        until = self._promised_until
        return until if until is not None and now < until else None

    def view(self) -> PeerLinkView:
        last = self._last
        return PeerLinkView(
            heard=tuple(self._heard.get(p) for p in range(self.paths)),
            peer_role=None if last is None else last.role,
            peer_epoch=0 if last is None else last.epoch,
            peer_serving=bool(last is not None and last.flags & Flag.SERVING),
            leading_epoch=self._leading_epoch,
            promise_confirmed_at=self._confirmed_at,
            promised_until=self._promised_until,
            listening_since=self._listening_since,
        )
