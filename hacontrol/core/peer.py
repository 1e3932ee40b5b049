"""The peer link's rules: a fast takeover of a confirmed-dead active, and the ZooKeeper-outage failsafe.

Both controllers send each other authenticated heartbeats every ``timing.heartbeat_interval_s`` on every
configured path (``hacontrol.adapters.peerlink``); what they heard arrives here as
:class:`~hacontrol.core.model.PeerLinkView`. ``decide`` consults these functions; they are pure.

**Fast takeover.** ZooKeeper notices a dead active only when its session expires (``session_timeout_s``).
The link notices sooner: a standby that heard the active lead under the current epoch, and then heard nothing
on any path for ``peer_dead_after_s`` while the active's alive znode (rewritten on every tick it leads) has not
changed for as long either, powers it off (a power method must confirm it off), fences the disks, and only
then claims, deleting the dead peer's leader znode in the same ZooKeeper multi that advances the epoch.
Silence alone never makes two actives: the peer is confirmed off before anything is claimed. And a healthy
active is not switched off for a broken cable: while ZooKeeper still sees it tick, a silent link is only a
silent link.

**Failsafe.** An active that loses ZooKeeper would step down at its lease deadline although nothing is
wrong with it. While the peer answers on the link it asks the peer for a *promise*: not to claim or fence for
``session_timeout_s`` from the moment it answers. An answered heartbeat sent at ``a`` gives a failsafe lease
until ``a + demote_deadline_s``, the same arithmetic as the ZooKeeper lease (``hacontrol.core.timing``), so
the active stops serving, and its watchdog fires, before any promise it relied on runs out. A standby that
has promised refuses to claim or fence until its promise has run out.
"""

from __future__ import annotations

from dataclasses import dataclass

from hacontrol.core.model import Observation, Role, SessionState
from hacontrol.core.timing import Timing

STANDING_BY = frozenset({Role.STANDBY, Role.STARTING})


@dataclass(frozen=True)
class Advert:
    """What this agent tells its peer in every heartbeat (set once per tick, read by the link's sender)."""

    role: Role
    epoch: int
    leading: bool  # holds the active role now (ZooKeeper lease or failsafe lease)
    serving: bool  # its data path accepts I/O
    want_promise: bool  # its ZooKeeper lease is not fresh: it asks the peer not to claim
    may_promise: bool  # it stands by and is not about to claim: it may promise the peer not to


def peer_silent(obs: Observation, now: float, timing: Timing) -> bool:
    """Heard before, and nothing on any path for ``peer_dead_after_s`` while we were listening (a stall of our
    own, e.g. a starved VM, restarts the count: the peer's heartbeats may be waiting in our socket)."""
    last = obs.link.last_heard
    if last is None:
        return False
    since = max(last, obs.link.listening_since or last)
    return now - since >= timing.peer_dead_after_s


def peer_standing_by(obs: Observation, now: float, timing: Timing) -> bool:
    """The peer says, on a path heard within ``peer_dead_after_s``, that it stands by and serves nothing."""
    link = obs.link
    if not link.paths_alive(now, timing.peer_dead_after_s):
        return False
    return link.peer_role in STANDING_BY and not link.peer_serving


def peer_active_on_link(obs: Observation, now: float, timing: Timing) -> bool:
    """The peer says, on a path heard within ``peer_dead_after_s``, that it is active and serving (e.g. on our
    promise, its ZooKeeper session gone: a standby then still presents the peer's group as it really is)."""
    link = obs.link
    return bool(link.paths_alive(now, timing.peer_dead_after_s)) and link.peer_serving and link.peer_role is Role.ACTIVE


def promised(obs: Observation, now: float) -> bool:
    """We promised the peer not to claim or fence, and the promise still holds."""
    until = obs.link.promised_until
    return until is not None and now < until


def fast_takeover_due(obs: Observation, now: float, timing: Timing) -> bool:
    """ZooKeeper still names the peer leader under the current epoch, we heard the peer lead under that epoch
    on the link, and it has been silent on every path since for ``peer_dead_after_s``."""
    c = obs.coord
    if not (obs.spec.fast_takeover and c.session is SessionState.CONNECTED and c.leader is not None):
        return False
    if c.leader.node != obs.peer or c.leader.ours or c.leader.epoch != c.epoch:
        return False
    ticking = c.peer_alive_at is not None and now - c.peer_alive_at < timing.peer_dead_after_s
    return (obs.link.leading_epoch == c.epoch and peer_silent(obs, now, timing) and not ticking
            and not promised(obs, now))


def failsafe_until(obs: Observation, timing: Timing) -> float | None:
    """End of the failsafe lease, or None when there is none.

    There is one when we serve as the active under the epoch we last fenced in, still hold the reservation
    under it (nobody fenced us since), no newer leader or epoch is known, and the peer promised on the link
    not to claim; the lease ends ``demote_deadline_s`` after we sent the heartbeat it answered.
    """
    link, c, s = obs.link, obs.coord, obs.storage
    confirmed = link.promise_confirmed_at
    record = s.last_fence
    if not obs.spec.failsafe or confirmed is None or record is None or not record.ok:
        return None
    epoch = record.epoch
    if not obs.datapath.serving or c.epoch != epoch or not s.visible:
        return None
    if c.leader is not None and (c.leader.node != obs.node or c.leader.epoch != epoch):
        return None
    if s.pr and not (s.my_key_epoch == epoch and s.holder == (obs.node, epoch)):
        return None
    return confirmed + timing.demote_deadline_s


def carried_over(obs: Observation, epoch: int) -> bool:
    """We lead again under ``epoch`` right after serving through a ZooKeeper outage under ``epoch - 1``: the
    epoch moved by our own claim alone (the counter only moves by claims), and the disks still show our
    reservation under the previous epoch, so no one fenced us in between. Fencing again under the new epoch
    (instead of stepping down) keeps the data path up."""
    s = obs.storage
    record = s.last_fence
    if record is None or not record.ok or record.epoch != epoch - 1:
        return False
    return not s.pr or (s.my_key_epoch == epoch - 1 and s.holder == (obs.node, epoch - 1))


def advert(obs: Observation, *, role: Role, lease_valid_until: float | None, claiming: bool, now: float,
           timing: Timing) -> Advert:
    """What to say on the link after this tick's decision (``claiming``: the plan claims or fences)."""
    c = obs.coord
    leading = role in (Role.ACTIVE, Role.PROMOTING) and lease_valid_until is not None and now < lease_valid_until
    fresh = (c.session is SessionState.CONNECTED and c.lease_confirmed_at is not None
             and now - c.lease_confirmed_at <= 2 * timing.loop_interval_s)
    want = leading and obs.spec.failsafe and not fresh and obs.storage.visible
    return Advert(role=role, epoch=c.epoch, leading=leading, serving=obs.datapath.serving, want_promise=want,
                  may_promise=role in STANDING_BY and not claiming and not obs.datapath.serving)


def stepped_down(obs: Observation) -> Advert | None:
    """What a stopping agent says, from an observation taken after its step-down: it stands by, serves
    nothing, and neither asks for nor gives a promise (it is about to go). Its peer then fences it the planned
    way (no power-off) even when ZooKeeper has only the end of its session to show. None while anything here
    still serves (a step that failed): the peer must not hear "serves nothing" then."""
    if obs.datapath.serving:
        return None
    return Advert(role=Role.STANDBY, epoch=obs.coord.epoch, leading=False, serving=False, want_promise=False,
                  may_promise=False)
