"""Capacity: dm-thin pool use from dmsetup, threshold edges with hysteresis, and the hactl status line."""

from __future__ import annotations

from hacontrol.adapters.lio.capacity import (
    CapacityReading,
    ThresholdWatch,
    parse_lines,
    parse_pool_status,
    read_capacity,
    thin_pools,
)
from hacontrol.cli.status import _capacity_lines

# As LVM thin (lvcreate --type thin-pool; lvcreate -V ... --thinpool) shows it to dmsetup.
TABLE = """\
vg0-pool_tmeta: 0 8192 linear 8:16 2048
vg0-pool_tdata: 0 204800 linear 8:16 10240
vg0-pool-tpool: 0 204800 thin-pool 253:0 253:1 128 0 1 skip_block_zeroing
vg0-pool: 0 204800 linear 253:2 0
vg0-thin1: 0 2097152 thin 253:2 1
vg0-thick: 0 409600 linear 8:16 215040
"""
STATUS = """\
vg0-pool_tmeta: 0 8192 linear
vg0-pool_tdata: 0 204800 linear
vg0-pool-tpool: 0 204800 thin-pool 1 25/1024 1500/1600 - rw discard_passdown queue_if_no_space - 1024
vg0-pool: 0 204800 linear
vg0-thin1: 0 2097152 thin 196608 2097151
vg0-thick: 0 409600 linear
"""
NUMBERS = {"253:2": "vg0-pool-tpool"}


def test_pool_status_takes_the_fuller_of_data_and_metadata():
    usage = parse_pool_status("p", ["0", "204800", "thin-pool", "1", "900/1000", "100/1600", "-", "rw"])
    assert usage is not None and usage.ratio == 0.9 and usage.mode == "rw"
    assert parse_pool_status("p", ["0", "8192", "linear"]) is None
    assert parse_pool_status("p", ["0", "1", "thin-pool", "1", "Fail"]) is None


def test_thin_devices_map_to_their_pool():
    pools = thin_pools(parse_lines(TABLE), parse_lines(STATUS), NUMBERS.get)
    assert set(pools) == {"vg0-thin1"}
    assert pools["vg0-thin1"].name == "vg0-pool-tpool" and abs(pools["vg0-thin1"].ratio - 0.9375) < 1e-9


def test_readings_for_thin_thick_and_missing_devices(tmp_path):
    thick = tmp_path / "thick"
    thick.write_text("")
    names = {"/dev/vg0/thin1": "vg0-thin1", str(thick): None, "/dev/missing": None}
    readings = read_capacity([("ds01", "/dev/vg0/thin1", 0.8), ("ds02", str(thick), 0.8),
                              ("ds03", "/dev/missing", 0.8)],
                             run=lambda what: TABLE if what == "table" else STATUS,
                             name_of=names.get, number_of=NUMBERS.get)
    assert [(r.lun, r.kind, r.over) for r in readings] == [("ds01", "dm-thin", True), ("ds02", "thick", False),
                                                          ("ds03", "unknown", False)]
    assert readings[0].as_dict()["pool"] == "vg0-pool-tpool" and readings[1].as_dict()["used_ratio"] is None


def test_threshold_crossings_are_edges_with_hysteresis():
    watch = ThresholdWatch()

    def at(ratio: float):
        return watch.update([CapacityReading("ds01", "/dev/x", "dm-thin", 0.8, ratio)])

    assert at(0.5) == ([], [])
    crossed, _ = at(0.81)
    assert [r.lun for r in crossed] == ["ds01"]
    assert at(0.95) == ([], [])  # still over: no new event
    assert at(0.79) == ([], [])  # inside the hysteresis band
    _, recovered = at(0.7)
    assert [r.lun for r in recovered] == ["ds01"]


def test_hactl_status_shows_a_line_per_lun_over_its_threshold():
    doc = {"nodes": [{"node": "ctrl-a", "capacity": [
        {"lun": "ds01", "pool": "vg0-pool-tpool", "used_ratio": 0.9375, "threshold_ratio": 0.8, "over": True},
        {"lun": "ds02", "pool": "", "used_ratio": None, "threshold_ratio": 0.8, "over": False}]},
        {"node": "ctrl-b"}]}
    assert _capacity_lines(doc) == ["capacity: ctrl-a LUN ds01 backing store 94% full (pool vg0-pool-tpool), "
                                    "warning at 80%"]
