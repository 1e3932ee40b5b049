"""The peer link's wire format and bookkeeping (hacontrol.adapters.peerlink.protocol): authentication, replay
protection, and the promises the failsafe rests on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacontrol.adapters.peerlink.protocol import (
    SIZE,
    BadPacket,
    Flag,
    Heartbeat,
    LinkState,
    decode,
    encode,
)
from hacontrol.core.model import Role
from hacontrol.core.peer import Advert

KEY = b"k" * 24
S = 2.0

ACTIVE = Advert(Role.ACTIVE, 5, leading=True, serving=True, want_promise=False, may_promise=False)
ASKING = Advert(Role.ACTIVE, 5, leading=True, serving=True, want_promise=True, may_promise=False)
STANDING_BY = Advert(Role.STANDBY, 5, leading=False, serving=False, want_promise=False, may_promise=True)


def pair(paths: int = 2) -> tuple[LinkState, LinkState]:
    a = LinkState(1, 2, paths, KEY, incarnation=100, promise_s=S, min_promise_s=S)
    b = LinkState(2, 1, paths, KEY, incarnation=200, promise_s=S, min_promise_s=S)
    return a, b


@given(st.builds(Heartbeat, node_id=st.integers(1, 65535), path=st.integers(0, 3),
                 incarnation=st.integers(0, 2**64 - 1), seq=st.integers(0, 2**64 - 1),
                 role=st.sampled_from(list(Role)), flags=st.sampled_from(list(Flag)),
                 epoch=st.integers(0, 2**32 - 1), ack_incarnation=st.integers(0, 2**64 - 1),
                 ack_seq=st.integers(0, 2**64 - 1), promise_ms=st.integers(0, 2**32 - 1)))
def test_encode_decode_round_trip(hb):
    data = encode(hb, KEY)
    assert len(data) == SIZE
    assert decode(data, KEY) == hb


def test_another_key_or_a_flipped_bit_is_refused():
    data = encode(Heartbeat(1, 0, 1, 1, Role.ACTIVE, Flag.LEADING, 3), KEY)
    with pytest.raises(BadPacket, match="tag"):
        decode(data, b"x" * 24)
    for i in (0, 10, SIZE - 1):
        flipped = bytearray(data)
        flipped[i] ^= 1
        with pytest.raises(BadPacket):
            decode(bytes(flipped), KEY)
    with pytest.raises(BadPacket, match="bytes"):
        decode(data[:-1], KEY)


def test_heard_per_path_and_the_peers_state():
    a, b = pair()
    a.advertise(ACTIVE)
    assert b.receive(a.heartbeat(0, 10.0), 0, 10.01) is None
    view = b.view()
    assert view.heard == (10.01, None)
    assert view.peer_role is Role.ACTIVE and view.peer_serving and view.peer_epoch == 5 and view.leading_epoch == 5


def test_duplicates_late_packets_and_replays_are_dropped():
    a, b = pair()
    a.advertise(ACTIVE)
    first, second = a.heartbeat(0, 1.0), a.heartbeat(0, 1.1)
    b.receive(second, 0, 1.15)
    for old in (first, second):  # overtaken, then duplicated / replayed
        b.receive(old, 0, 5.0)
    assert b.view().heard == (1.15, None)
    assert b.counters.stale == 2 and b.counters.accepted == 1


def test_a_packet_for_another_path_or_from_another_node_is_foreign():
    a, b = pair()
    a.advertise(ACTIVE)
    b.receive(a.heartbeat(1, 1.0), 0, 1.0)  # sent for path 1, arrived on path 0: a routing mix-up
    me_again = LinkState(2, 1, 2, KEY, incarnation=1, promise_s=S, min_promise_s=S)
    b.receive(me_again.heartbeat(0, 1.0), 0, 1.0)  # our own id: a loop
    assert b.counters.foreign == 2 and b.view().heard == (None, None)


def test_a_restarted_peer_is_heard_and_an_older_incarnation_only_after_silence():
    a, b = pair()
    a.advertise(ACTIVE)
    b.receive(a.heartbeat(0, 1.0), 0, 1.0)
    restarted = LinkState(1, 2, 2, KEY, incarnation=101, promise_s=S, min_promise_s=S)
    restarted.advertise(STANDING_BY)
    b.receive(restarted.heartbeat(0, 2.0), 0, 2.0)  # seq 1 again, but a newer incarnation
    assert b.view().peer_role is Role.STANDBY and b.view().leading_epoch == 0
    b.receive(a.heartbeat(0, 2.1), 0, 2.1)  # the old incarnation (a replay): refused while the new one talks
    assert b.view().peer_role is Role.STANDBY and b.counters.stale == 1
    b.receive(a.heartbeat(0, 9.0), 0, 9.0)  # ... accepted once the newer one has been silent (clock went back)
    assert b.view().peer_role is Role.ACTIVE


def test_a_promise_is_given_only_when_asked_and_allowed():
    a, b = pair()
    a.advertise(ACTIVE)  # not asking
    b.advertise(STANDING_BY)
    assert b.receive(a.heartbeat(0, 1.0), 0, 1.0) is None
    a.advertise(ASKING)
    b.advertise(Advert(Role.STANDBY, 5, leading=False, serving=False, want_promise=False, may_promise=False))
    assert b.receive(a.heartbeat(0, 1.1), 0, 1.1) is None  # about to claim: may not promise
    b.advertise(STANDING_BY)
    reply = b.receive(a.heartbeat(0, 1.2), 0, 1.25)
    assert reply is not None and b.view().promised_until == pytest.approx(1.25 + S)
    a.receive(reply, 0, 1.3)
    assert a.view().promise_confirmed_at == 1.2  # our send time, not the arrival: conservative


def test_stop_promising_reports_what_binds_and_withholds_new_promises_until_the_next_tick():
    a, b = pair()
    a.advertise(ASKING)
    b.advertise(STANDING_BY)
    b.receive(a.heartbeat(0, 1.0), 0, 1.0)
    assert b.stop_promising(2.0) == pytest.approx(1.0 + S)
    assert b.stop_promising(1.0 + S) is None  # run out
    assert b.receive(a.heartbeat(0, 4.0), 0, 4.0) is None  # withheld: the executor is about to claim
    b.advertise(STANDING_BY)  # next tick: standing by again
    assert b.receive(a.heartbeat(0, 4.1), 0, 4.1) is not None


def test_a_promise_ends_when_the_peer_that_asked_steps_down():
    """A planned hand-over right after a ZooKeeper hiccup: the old active asked for a promise, then stepped
    down; the promise must not hold up the new active's claim for a whole session timeout."""
    a, b = pair()
    a.advertise(ASKING)
    b.advertise(STANDING_BY)
    b.receive(a.heartbeat(0, 1.0), 0, 1.0)
    a.advertise(ACTIVE)  # ZooKeeper is back: leading and serving, no longer asking: the promise stays
    b.receive(a.heartbeat(0, 1.1), 0, 1.1)
    assert b.view().promised_until == pytest.approx(1.0 + S)
    a.advertise(STANDING_BY)  # handed over: serves nothing, leads nothing
    b.receive(a.heartbeat(1, 1.2), 1, 1.2)
    assert b.view().promised_until is None and b.counters.promises_released == 1


def test_a_promise_survives_a_replay_and_a_restarted_peer_that_has_not_ticked_yet():
    a, b = pair()
    a.advertise(STANDING_BY)
    old = a.heartbeat(0, 0.5)  # an earlier "stepped down" heartbeat, replayed after the request
    a.advertise(ASKING)
    b.advertise(STANDING_BY)
    b.receive(a.heartbeat(0, 1.0), 0, 1.0)
    b.receive(old, 0, 1.1)
    assert b.view().promised_until == pytest.approx(1.0 + S)
    restarted = LinkState(1, 2, 2, KEY, incarnation=101, promise_s=S, min_promise_s=S)  # no advert yet: its
    b.receive(restarted.heartbeat(0, 1.2), 0, 1.2)  # kernel may still serve what the old process set up
    assert b.view().promised_until == pytest.approx(1.0 + S)


@pytest.mark.parametrize("promiser", [
    Advert(Role.ACTIVE, 5, leading=True, serving=True, want_promise=False, may_promise=False),
    Advert(Role.STANDBY, 7, leading=False, serving=False, want_promise=False, may_promise=True),
])
def test_a_promise_from_a_leader_or_from_a_newer_epoch_does_not_count(promiser):
    a, b = pair()
    a.advertise(ASKING)
    b.advertise(STANDING_BY)
    reply = b.receive(a.heartbeat(0, 1.0), 0, 1.0)
    b.advertise(promiser)
    forged = b.heartbeat(0, 1.05)  # same ack and PROMISE flag, but what b says of itself disqualifies it
    assert reply is not None
    a.receive(forged, 0, 1.1)
    assert a.view().promise_confirmed_at is None


def test_a_promise_shorter_than_our_session_does_not_count():
    a, _ = pair()
    short = LinkState(2, 1, 2, KEY, incarnation=200, promise_s=S / 2, min_promise_s=S)
    a.advertise(ASKING)
    short.advertise(STANDING_BY)
    reply = short.receive(a.heartbeat(0, 1.0), 0, 1.0)
    a.receive(reply, 0, 1.0)
    assert a.view().promise_confirmed_at is None


def test_a_replayed_promise_never_moves_the_failsafe_lease_forward():
    a, b = pair()
    a.advertise(ASKING)
    b.advertise(STANDING_BY)
    reply = b.receive(a.heartbeat(0, 1.0), 0, 1.0)
    a.receive(reply, 0, 1.01)
    later = b.heartbeat(1, 5.0)  # carries the same ack and PROMISE, sent much later on the other path
    a.receive(later, 1, 5.0)
    a.receive(reply, 0, 9.0)  # and the original, replayed
    assert a.view().promise_confirmed_at == 1.0


def test_a_stall_of_our_own_restarts_the_time_we_have_been_listening():
    _, b = pair()
    b.awake(1.0, max_gap_s=0.3)
    b.awake(1.1, max_gap_s=0.3)
    assert b.view().listening_since == 1.0
    b.awake(2.5, max_gap_s=0.3)  # our loop did not run for 1.4 s: a starved VM, a SIGSTOP
    assert b.view().listening_since == 2.5


def test_the_longest_silence_of_a_live_peer_is_kept():
    a, b = pair()
    a.advertise(ACTIVE)
    for t in (1.0, 1.1, 1.2, 2.7, 2.8):  # a 1.5 s stall of the sender
        b.receive(a.heartbeat(0, t), 0, t)
    assert b.counters.longest_gap_s == 1.5
