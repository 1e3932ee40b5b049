"""Sense decoding: raw fixed/descriptor sense data to key/ASC/ASCQ, and the names the report uses."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacontrol.probe.sense import Sense, condition, parse_sense, status_name


def fixed(key: int, asc: int, ascq: int, code: int = 0x70) -> bytes:
    raw = bytearray(18)
    raw[0], raw[2], raw[7], raw[12], raw[13] = code, key, 10, asc, ascq
    return bytes(raw)


def descriptor(key: int, asc: int, ascq: int, code: int = 0x72) -> bytes:
    return bytes([code, key, asc, ascq, 0, 0, 0, 0])


@pytest.mark.parametrize(
    ("key", "asc", "ascq", "label"),
    [
        (0x2, 0x04, 0x0A, "NOT READY 02/04/0A: LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION"),
        (0x2, 0x04, 0x0B, "NOT READY 02/04/0B: LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE"),
        (0x6, 0x29, 0x00, "UNIT ATTENTION 06/29/00: POWER ON, RESET, OR BUS DEVICE RESET OCCURRED"),
        (0x6, 0x29, 0x07, "UNIT ATTENTION 06/29/07: I_T NEXUS LOSS OCCURRED"),
        (0x6, 0x2A, 0x06, "UNIT ATTENTION 06/2A/06: ASYMMETRIC ACCESS STATE CHANGED"),
        (0x7, 0x27, 0x07, "DATA PROTECT 07/27/07: SPACE ALLOCATION FAILED WRITE PROTECT"),
        (0x5, 0x25, 0x00, "ILLEGAL REQUEST 05/25/00: LOGICAL UNIT NOT SUPPORTED"),
        (0x5, 0x21, 0x00, "ILLEGAL REQUEST 05/21/00: LOGICAL BLOCK ADDRESS OUT OF RANGE"),
        (0x2, 0x08, 0x00, "NOT READY 02/08/00: LOGICAL UNIT COMMUNICATION FAILURE"),
    ],
)
@pytest.mark.parametrize("encode", [fixed, descriptor])
def test_failover_conditions_are_named_in_both_formats(key, asc, ascq, label, encode):
    sense = parse_sense(encode(key, asc, ascq))
    assert sense == Sense(key, asc, ascq)
    assert sense.describe() == label


def test_unknown_asc_is_printed_as_hex():
    assert Sense(0x3, 0x99, 0x42).describe() == "MEDIUM ERROR 03/99/42: ASC 0x99 ASCQ 0x42"
    assert Sense(0xF, 0, 0).key_name == "SENSE KEY 0xF"


def test_deferred_errors_are_marked():
    assert parse_sense(fixed(0x3, 0x11, 0x00, code=0x71)).deferred
    assert parse_sense(descriptor(0x3, 0x11, 0x00, code=0xF3)).deferred  # VALID bit (0x80) is ignored
    assert "(deferred)" in parse_sense(fixed(0x3, 0x11, 0x00, code=0x71)).describe()


def test_short_or_unknown_sense_is_not_guessed():
    assert parse_sense(b"") is None
    assert parse_sense(bytes([0x70, 0, 6])) is None
    assert parse_sense(bytes([0x7F, 0, 6, 0, 0, 0])) is None
    # A fixed-format header cut before ASC/ASCQ still gives the sense key.
    assert parse_sense(bytes([0x70, 0, 0x6, 0, 0, 0, 0, 0])) == Sense(0x6, 0, 0)


@given(st.integers(0, 15), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=40))
def test_any_fixed_sense_round_trips(key, asc, ascq, tail):
    assert parse_sense(fixed(key, asc, ascq) + tail) == Sense(key, asc, ascq)


def test_status_names_and_condition_labels():
    assert status_name(0x18) == "RESERVATION CONFLICT"
    assert status_name(0x08) == "BUSY"
    assert status_name(0x77) == "STATUS 0x77"
    assert condition(0x18, None) == "RESERVATION CONFLICT"
    assert condition(0x02, Sense(0x6, 0x2A, 0x06)) == (
        "CHECK CONDITION UNIT ATTENTION 06/2A/06: ASYMMETRIC ACCESS STATE CHANGED")
    assert Sense(0x6, 0x29, 0x01).is_unit_attention()
    assert not Sense(0x2, 0x04, 0x0A).is_unit_attention()
