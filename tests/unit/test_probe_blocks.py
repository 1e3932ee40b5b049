"""Block encoding/verification and the write ledger's accounting (acknowledged = verified + superseded + lost)."""

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacontrol.probe.blocks import (
    MIN_BLOCK_SIZE,
    BlockState,
    DecodedBlock,
    WriteLedger,
    decode_block,
    encode_block,
)

RUN = uuid.UUID(int=7).bytes
OTHER_RUN = uuid.UUID(int=8).bytes

block_sizes = st.sampled_from([MIN_BLOCK_SIZE, 512, 520, 4096])


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**63), block_sizes)
def test_round_trip(seq, lba, time_ns, size):
    raw = encode_block(RUN, seq, lba, time_ns, size)
    assert len(raw) == size
    assert decode_block(raw, RUN, lba) == DecodedBlock(BlockState.INTACT, seq, time_ns)


@given(st.integers(0, 511), st.integers(1, 255), st.integers(0, 10**6))
def test_any_single_byte_change_is_detected(position, flip, seq):
    raw = bytearray(encode_block(RUN, seq, 42, 1, 512))
    raw[position] ^= flip
    assert decode_block(bytes(raw), RUN, 42).state is not BlockState.INTACT


def test_foreign_misplaced_and_corrupt_blocks():
    raw = encode_block(RUN, 5, 42, 1, 512)
    assert decode_block(bytes(512), RUN, 42).state is BlockState.FOREIGN
    assert decode_block(raw, OTHER_RUN, 42).state is BlockState.FOREIGN  # an earlier run's block
    assert decode_block(raw[:100], RUN, 42).state is BlockState.FOREIGN
    assert decode_block(raw, RUN, 43) == DecodedBlock(BlockState.MISPLACED, 5, 1)
    corrupt = raw[:300] + b"\0" + raw[301:]
    assert decode_block(corrupt, RUN, 42) == DecodedBlock(BlockState.CORRUPT, 5)


def test_payload_differs_between_blocks():
    a, b = encode_block(RUN, 1, 0, 0, 512), encode_block(RUN, 2, 0, 0, 512)
    assert a[56:-16] != b[56:-16]


def test_block_size_below_minimum_is_refused():
    with pytest.raises(ValueError, match="minimum"):
        encode_block(RUN, 1, 0, 0, MIN_BLOCK_SIZE - 1)


def intact(seq: int) -> DecodedBlock:
    return DecodedBlock(BlockState.INTACT, seq, 0)


def test_ledger_verifies_the_latest_acknowledged_write():
    ledger = WriteLedger()
    ledger.write_acknowledged(0, 0)
    ledger.write_acknowledged(1, 1)
    assert ledger.verify(0, intact(0)) is True
    assert ledger.verify(1, intact(0)) is False  # an older block at index 1: lost
    assert (ledger.acknowledged, ledger.verified, len(ledger.lost)) == (2, 1, 1)
    assert ledger.lost[0].found == "block of seq 0"


def test_a_later_unacknowledged_write_may_have_landed():
    ledger = WriteLedger()
    ledger.write_acknowledged(3, 3)
    ledger.write_failed(3, 13)
    assert ledger.readback_expected(3) is None  # uncertain: do not read back
    assert ledger.verify(3, intact(13)) is True
    ledger.write_acknowledged(4, 4)
    ledger.write_failed(4, 14)
    assert ledger.verify(4, intact(4)) is True  # or it did not land
    ledger.write_acknowledged(5, 5)
    assert ledger.verify(5, intact(15)) is False  # never attempted there: not ours to accept


def test_wrap_supersedes_and_bad_readback_counts_as_lost():
    ledger = WriteLedger()
    ledger.write_acknowledged(0, 0)
    ledger.write_acknowledged(0, 10)
    ledger.readback_damaged(10)
    ledger.write_acknowledged(0, 20)
    assert ledger.superseded == 1 and len(ledger.lost) == 1
    assert ledger.verify(0, intact(20)) is True
    assert ledger.acknowledged == ledger.verified + ledger.superseded + len(ledger.lost)


def test_unreadable_block_loses_its_write():
    ledger = WriteLedger()
    ledger.write_acknowledged(0, 0)
    ledger.write_failed(1, 1)
    assert ledger.verify(0, None) is False
    assert ledger.verify(1, None) is None  # nothing acknowledged there
    assert ledger.lost[0].found == "unreadable"
    assert ledger.unverified() == 0


@st.composite
def histories(draw):
    """A random run on a small region: each write acknowledged or not, each final block in some state."""
    region = draw(st.integers(1, 8))
    outcomes = draw(st.lists(st.booleans(), max_size=60))
    damaged = draw(st.sets(st.integers(0, 59)))
    found = draw(st.lists(st.sampled_from(["own", "newer", "zero", "none"]), min_size=region, max_size=region))
    return region, outcomes, damaged, found


@given(histories())
def test_every_acknowledged_write_lands_in_exactly_one_bucket(history):
    region, outcomes, damaged, found = history
    ledger = WriteLedger()
    last_attempt: dict[int, int] = {}
    for seq, acked in enumerate(outcomes):
        index = seq % region
        last_attempt[index] = seq
        if acked:
            ledger.write_acknowledged(index, seq)
            if seq in damaged:
                ledger.readback_damaged(seq)
        else:
            ledger.write_failed(index, seq)
    for index in ledger.indexes():
        kind = found[index]
        block = {"own": intact(last_attempt[index]), "newer": intact(last_attempt[index] + 1000),
                 "zero": DecodedBlock(BlockState.FOREIGN), "none": None}[kind]
        ledger.verify(index, block)
    assert ledger.unverified() == 0
    assert ledger.acknowledged == sum(outcomes)
    assert ledger.acknowledged == ledger.verified + ledger.superseded + len(ledger.lost)
