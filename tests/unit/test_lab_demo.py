"""The lab demo's timeline: first good I/O is measured at the end of the fault's pause, and lines are in order."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from hacontrol.lab.demo import _timeline, render, timeline_events

T0 = 1_800_000_000.0  # the request, wall clock
PROBE_START = T0 - 2.0  # the probe started 2 s before it


def probe(pause_start_s: float, pause_s: float, outages: list[dict] | None = None) -> dict:
    started = datetime.datetime.fromtimestamp(PROBE_START, datetime.UTC).isoformat()
    return {"started_at": started, "io_pause_s": pause_s, "io_pause_start_s": pause_start_s,
            "io_errors": 0, "writes_acknowledged": 100, "writes_lost": 0, "outages": outages or []}


def outage(lost: float, first_io: float) -> dict:
    return {"lost_t_s": lost, "cause": "connection_lost", "lost_portal": "x", "relogin_t_s": lost + 0.01,
            "relogin_portal": "x", "login_attempts": 1, "first_io_t_s": first_io}


RECORD = {"at": T0 + 0.01, "phases": {"detect": 0.03, "claimed": 0.05, "fenced": 0.07, "vips": 0.19,
                                      "active": 0.35}}


def test_the_planned_move_of_the_bug_report_puts_first_good_io_after_the_pause():
    # The old active cut the session at +0.04 s; the probe logged in again to it and wrote once at +0.056 s;
    # then the address moved and nothing completed from +0.06 s to +0.62 s.
    doc = probe(2.06, 0.563, outages=[outage(2.04, 2.056)])
    r = _timeline(T0, RECORD, doc)
    assert r["first_good_io_s"] == 0.623
    assert r["first_good_io_s"] >= r["io_pause_start_s"] + r["io_pause_s"] - 0.001


def test_a_longest_pause_before_the_fault_falls_back_to_the_first_outage_after_it():
    doc = probe(0.5, 0.9, outages=[outage(1.0, 1.3), outage(2.2, 2.45)])
    assert _timeline(T0, RECORD, doc)["first_good_io_s"] == 0.45


@given(pause_start=st.floats(-1.0, 3.0), pause=st.floats(0.001, 5.0),
       blip=st.floats(0.0, 0.5), phases=st.lists(st.floats(0.0, 5.0), min_size=5, max_size=5))
def test_first_good_io_ends_the_fault_s_pause_and_the_timeline_is_ordered(pause_start, pause, blip, phases):
    record = {"at": T0, "phases": dict(zip(("detect", "claimed", "fenced", "vips", "active"), phases, strict=True))}
    doc = probe(2.0 + pause_start, pause, outages=[outage(2.0 + blip, 2.0 + blip + 0.01)])
    r = _timeline(T0, record, doc)
    if pause_start >= 0:
        assert r["first_good_io_s"] >= pause_start + pause - 0.001
    events = timeline_events(r, "request", unplanned=False)
    assert [t for t, _ in events] == sorted(t for t, _ in events)
    text = render({"unplanned": {**r, "probe_fatal": None, "failover_s": 1.0},
                   "planned": {**r, "probe_fatal": None, "failover_s": 1.0}})
    times = [float(line.split("=")[1].split(" s")[0]) for line in text.splitlines() if line.startswith("  t=")]
    half = len(times) // 2
    assert times[:half] == sorted(times[:half]) and times[half:] == sorted(times[half:])
