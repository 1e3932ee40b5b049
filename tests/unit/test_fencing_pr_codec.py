"""PR keys, CDBs and PR IN data against hand-computed bytes (SPC-4 6.15 PERSISTENT RESERVE IN, 6.16 OUT)."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacontrol.adapters.fencing import pr_codec as pr


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- keys ------------------------------------------------------------------------------------------------


def test_key_is_node_id_then_epoch():
    assert pr.pr_key(1, 2) == 0x0000_0001_0000_0002
    assert pr.pr_key(0xFFFF, 0xFFFF_FFFF) == 0x0000_FFFF_FFFF_FFFF
    assert pr.key_parts(0x0000_0002_0000_0007) == (2, 7)


@pytest.mark.parametrize(("node_id", "epoch"), [(0, 1), (65536, 1), (-1, 1), (1, -1), (1, 2**32)])
def test_key_bounds_are_refused(node_id, epoch):
    with pytest.raises(ValueError, match=r"node id|epoch"):
        pr.pr_key(node_id, epoch)


def test_epoch_zero_is_a_valid_key_and_never_key_zero():
    assert pr.pr_key(1, 0) == 1 << 32


@given(st.integers(1, 0xFFFF), st.integers(0, 0xFFFF_FFFF))
def test_key_round_trip(node_id, epoch):
    key = pr.pr_key(node_id, epoch)
    assert pr.key_parts(key) == (node_id, epoch)
    assert 0 < key < 2**48


def test_foreign_keys_decode_to_node_zero():
    assert pr.key_parts(0xDEAD_BEEF_0000_0001) == (0, 1)  # bits above the 16-bit node id: not ours
    assert pr.key_parts(0x0000_0000_0000_0005) == (0, 5)
    assert pr.describe_key(0xDEAD_BEEF_0000_0001).endswith("(foreign)")
    assert pr.describe_key(pr.pr_key(2, 9)) == "0x0000000200000009 (node 2, epoch 9)"


# --- CDBs ------------------------------------------------------------------------------------------------


def test_pr_in_cdbs():
    assert pr.cdb_pr_in(pr.PrIn.READ_KEYS, 0x2000) == h("5E 00 00 00 00 00 00 20 00 00")
    assert pr.cdb_pr_in(pr.PrIn.READ_RESERVATION, 0x2000) == h("5E 01 00 00 00 00 00 20 00 00")
    assert pr.cdb_pr_in(pr.PrIn.READ_FULL_STATUS, 0xFFFF) == h("5E 03 00 00 00 00 00 FF FF 00")
    with pytest.raises(ValueError):
        pr.cdb_pr_in(pr.PrIn.READ_KEYS, 0x10000)


A1 = "00 00 00 01 00 00 00 01"  # node 1, epoch 1
A2 = "00 00 00 01 00 00 00 02"
B1 = "00 00 00 02 00 00 00 01"
ZERO8 = "00" * 8
TAIL = "00 00 00 00 00 00 00 00"  # obsolete (4), flags, reserved, obsolete (2)


@pytest.mark.parametrize(
    ("command", "cdb", "params"),
    [
        (pr.register_and_ignore(pr.pr_key(1, 2)), "5F 06 00 00 00 00 00 00 18 00", f"{ZERO8} {A2} {TAIL}"),
        (pr.register(pr.pr_key(1, 1), pr.pr_key(1, 2)), "5F 00 00 00 00 00 00 00 18 00", f"{A1} {A2} {TAIL}"),
        (pr.register(pr.pr_key(1, 2), 0), "5F 00 00 00 00 00 00 00 18 00", f"{A2} {ZERO8} {TAIL}"),
        (pr.reserve(pr.pr_key(1, 2), 5), "5F 01 05 00 00 00 00 00 18 00", f"{A2} {ZERO8} {TAIL}"),
        (pr.release(pr.pr_key(1, 2), 7), "5F 02 07 00 00 00 00 00 18 00", f"{A2} {ZERO8} {TAIL}"),
        (pr.preempt(pr.pr_key(1, 2), pr.pr_key(2, 1), 5, abort=True), "5F 05 05 00 00 00 00 00 18 00",
         f"{A2} {B1} {TAIL}"),
        (pr.preempt(pr.pr_key(1, 2), pr.pr_key(2, 1), 5, abort=False), "5F 04 05 00 00 00 00 00 18 00",
         f"{A2} {B1} {TAIL}"),
        (pr.clear(pr.pr_key(1, 2)), "5F 03 00 00 00 00 00 00 18 00", f"{A2} {ZERO8} {TAIL}"),
    ],
    ids=["register-and-ignore", "register", "unregister", "reserve", "release", "preempt-and-abort", "preempt",
         "clear"],
)
def test_pr_out_commands(command, cdb, params):
    assert command.cdb == h(cdb)
    assert command.data == h(params)
    assert len(command.data) == 24 == int.from_bytes(command.cdb[5:9], "big")


def test_aptpl_is_bit_0_of_byte_20():
    data = pr.pr_out_parameters(1, 2, aptpl=True)
    assert data[20] == 0x01 and data[:16] == h("00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 02")


def test_command_names_for_messages():
    assert pr.preempt(1 << 32, 2 << 32, 5, abort=True).name == "PREEMPT AND ABORT"
    assert pr.register_and_ignore(1 << 32).name == "REGISTER AND IGNORE EXISTING KEY"


# --- PR IN data ------------------------------------------------------------------------------------------


def test_read_keys():
    data = h("00 00 00 07 00 00 00 10 00 00 00 02 00 00 00 05 00 00 00 01 00 00 00 04")
    assert pr.parse_read_keys(data) == pr.Keys(7, (pr.pr_key(2, 5), pr.pr_key(1, 4)))


def test_read_keys_empty_and_padding_ignored():
    assert pr.parse_read_keys(h("00 00 00 03 00 00 00 00") + bytes(100)) == pr.Keys(3, ())


@pytest.mark.parametrize(
    "data",
    [h("00 00 00 07 00 00 00 10 00 00 00 02 00 00 00 05"),  # 2 keys announced, 1 returned
     h("00 00 00 07 00 00 00 0C 00 00 00 02 00 00 00 05 00 00 00 00"),  # not a multiple of 8
     h("00 00 00 07")],  # no header
    ids=["truncated", "odd-length", "short-header"],
)
def test_read_keys_refuses_malformed_data(data):
    with pytest.raises(ValueError, match="READ KEYS"):
        pr.parse_read_keys(data)


def test_read_reservation_held():
    data = h("00 00 00 09 00 00 00 10 00 00 00 02 00 00 00 05 00 00 00 00 00 05 00 00")
    assert pr.parse_read_reservation(data) == pr.Reservation(9, pr.pr_key(2, 5), 5, 0)


def test_read_reservation_all_registrants_reports_key_zero():
    data = h("00 00 00 09 00 00 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00 07 00 00")
    held = pr.parse_read_reservation(data)
    assert held.key == 0 and held.pr_type == 7 and pr.PrType(held.pr_type).all_registrants


def test_read_reservation_none():
    assert pr.parse_read_reservation(h("00 00 00 09 00 00 00 00")) == pr.Reservation(9, None, None)


def test_read_reservation_truncated():
    with pytest.raises(ValueError, match="READ RESERVATION"):
        pr.parse_read_reservation(h("00 00 00 09 00 00 00 10 00 00 00 02"))


def test_registrants_only_is_not_all_registrants():
    assert not pr.PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY.all_registrants
    assert pr.PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS.all_registrants


def _iscsi_tid(text: str, with_isid: bool) -> bytes:
    body = text.encode() + b"\0"
    body += b"\0" * (-len(body) % 4)
    return bytes([(0x40 if with_isid else 0x00) | 5, 0]) + struct.pack(">H", len(body)) + body


def _full_status_descriptor(key: int, flags: int, scope_type: int, rtpi: int, tid: bytes) -> bytes:
    return struct.pack(">Q4xBB4xHI", key, flags, scope_type, rtpi, len(tid)) + tid


def test_read_full_status_gives_each_nexus_with_its_target_port_and_the_holder():
    d1 = _full_status_descriptor(0xA1, 0x01, 0x05, 1, _iscsi_tid("iqn.2024-01.org.hacontrol:probe,i,0x23D000001", True))
    d2 = _full_status_descriptor(0xB2, 0x02, 0x00, 2, _iscsi_tid("iqn.2024-01.org.hacontrol:probe2", False))
    data = struct.pack(">II", 7, len(d1) + len(d2)) + d1 + d2
    generation, regs = pr.parse_read_full_status(data)
    assert generation == 7
    assert regs == (pr.FullStatus(0xA1, True, False, 0, 5, 1, "iqn.2024-01.org.hacontrol:probe", "23d000001"),
                    pr.FullStatus(0xB2, False, True, 0, 0, 2, "iqn.2024-01.org.hacontrol:probe2", ""))
    assert pr.parse_read_full_status(struct.pack(">II", 3, 0)) == (3, ())
    with pytest.raises(ValueError, match="runs past"):
        pr.parse_read_full_status(struct.pack(">II", 1, len(d1) - 4) + d1[:-4])
    with pytest.raises(ValueError, match="announced"):
        pr.parse_read_full_status(struct.pack(">II", 1, len(d1)) + d1[:-4])
