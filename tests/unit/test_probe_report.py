"""Pause computation and the report's JSON shape."""

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacontrol.probe.report import PauseStats, PauseTracker, Recorder, Report, compute_pauses


@pytest.mark.parametrize(
    ("completions", "end", "expected"),
    [
        ([], 5.0, PauseStats(5.0, 0.0, 1)),  # nothing completed: the whole phase is one pause
        ([0.01, 0.03, 0.04], 0.05, PauseStats(0.02, 0.01, 0)),
        ([0.01, 0.02, 2.52, 2.53], 2.54, PauseStats(2.5, 0.02, 1)),
        ([0.01, 1.52, 1.53, 3.53, 3.54], 3.55, PauseStats(2.0, 1.53, 2)),
        ([0.01, 0.02], 3.0, PauseStats(2.98, 0.02, 1)),  # stalled until the run ended
        ([1.0, 2.0], 2.0, PauseStats(1.0, 0.0, 0)),  # exactly 1 s is not "over 1 s"
    ],
)
def test_pauses(completions, end, expected):
    got = compute_pauses(completions, 0.0, end)
    assert got.longest_s == pytest.approx(expected.longest_s)
    assert got.longest_start_t_s == pytest.approx(expected.longest_start_t_s)
    assert got.over_threshold == expected.over_threshold


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=50), st.floats(0, 10, allow_nan=False))
def test_pauses_match_brute_force(completions, tail):
    end = max(completions, default=0.0) + tail
    points = [0.0, *sorted(completions), end]
    gaps = [(b - a, a) for a, b in itertools.pairwise(points)]
    got = compute_pauses(completions, 0.0, end)
    assert got.longest_s == max(g for g, _ in gaps)
    assert got.over_threshold == sum(1 for g, _ in gaps if g > 1.0)
    assert (got.longest_s, got.longest_start_t_s) in gaps


def test_tracker_ignores_out_of_order_completion():
    tracker = PauseTracker(0.0)
    tracker.completion(2.0)
    tracker.completion(1.5)  # cannot shorten or reopen a gap
    assert tracker.finish(2.5).longest_s == pytest.approx(2.0)


def make_report(**overrides) -> Report:
    fields = dict(
        run_id="r", started_at="2026-01-01T00:00:00+00:00", target="iqn.t", lun=1, portals=("10.77.0.1:3260",),
        chap="mutual", block_size=512, region_offset_blocks=0, region_blocks=100, interval_ms=10.0, duration_s=1.0,
        stopped_by="duration", fatal=None, io_pause_s=0.5, io_pause_start_s=0.2, pauses_over_1s=0,
        writes_attempted=100, writes_acknowledged=100, writes_verified=100, writes_superseded=0, writes_lost=0,
        reads=99, io_errors=0, unit_attentions=1, errors_by_kind={"unit_attention": 1}, scsi_conditions={},
        connection_events=(), outages=(), errors=(), errors_dropped=0, lost_writes=(),
        verification_complete=True, verification_detail="100 blocks read",
    )
    fields.update(overrides)
    return Report(**fields)


def test_json_has_the_stable_keys():
    doc = json.loads(make_report().to_json())
    assert doc["schema"] == "hacontrol.probe.io/1"
    for key in ("io_pause_s", "io_errors", "writes_lost", "writes_acknowledged", "writes_verified",
                "pauses_over_1s", "errors_by_kind", "connection_events", "outages"):
        assert key in doc
    assert make_report().failure_reason() is None


def test_failure_reason_is_one_line():
    from hacontrol.probe.report import LostWriteInfo

    report = make_report(writes_lost=2, lost_writes=(LostWriteInfo(7, 107, "foreign data"),))
    reason = report.failure_reason()
    assert reason == "2 of 100 acknowledged writes lost (first: seq 7 at LBA 107: found foreign data)"
    assert make_report(fatal="login failed").failure_reason() == "login failed"
    assert "\n" not in reason


def test_recorder_caps_the_error_list_but_counts_everything():
    from hacontrol.probe.report import ErrorEvent

    rec = Recorder(max_errors=2)
    for i in range(5):
        rec.error(ErrorEvent(float(i), "io", "timeout", "write", "x"))
    assert len(rec.errors) == 2 and rec.errors_dropped == 3 and rec.by_kind["timeout"] == 5


def test_recorder_outage_lifecycle():
    rec = Recorder()
    rec.io_completed(0.5)  # no outage yet: nothing to attach to
    rec.outage_started(1.0, "connection_lost", "a:3260")
    rec.login_attempted()
    rec.login_attempted()
    rec.io_completed(1.1)  # not logged in again yet: not "first I/O after the loss"
    rec.relogged_in(2.0, "b:3260")
    rec.login_attempted()  # a later login does not belong to the closed outage
    rec.io_completed(2.1)
    rec.io_completed(2.2)
    (outage,) = rec.frozen_outages()
    assert (outage.login_attempts, outage.relogin_portal, outage.first_io_t_s) == (2, "b:3260", 2.1)
