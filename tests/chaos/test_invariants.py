"""The chaos invariants themselves can fail: each one on synthetic trial data (no rig needed)."""

from __future__ import annotations

from tests.chaos.invariants import Budget, Sample, judge, two_writers

GOOD = {"writes_acknowledged": 100, "writes_lost": 0, "verification_complete": True, "io_errors": 0,
        "io_pause_s": 1.2, "scsi_conditions": {"UNIT ATTENTION 06/2A/06": 2}, "errors": []}
BUDGET = Budget(io_pause_s=4.0, epoch_changes=(1, 1))


def test_a_clean_failover_passes():
    samples = [Sample(0.0, "ctrl-a", True, True), Sample(0.1, "ctrl-b", False, True),
               Sample(3.0, "ctrl-a", None, None), Sample(3.1, "ctrl-b", True, True)]
    assert judge(GOOD, samples, (4, 5), BUDGET).ok


def test_two_writers_are_caught_and_a_fenced_ao_is_not_a_writer():
    both = [Sample(1.0, "ctrl-a", True, True), Sample(1.2, "ctrl-b", True, True), Sample(1.45, "ctrl-a", True, True),
            Sample(1.8, "ctrl-a", True, True)]
    assert two_writers(both)
    # a hand-over between two samples: a's last writer sample, then b's first; a goes dark (powered off)
    handover = [Sample(1.0, "ctrl-a", True, True), Sample(1.2, "ctrl-b", True, True), Sample(1.4, "ctrl-b", True, True)]
    assert not two_writers(handover)
    # a late sample from before the fence arrives after b's first writer sample, then a's key is gone
    preempted = [*handover[:2], Sample(1.3, "ctrl-a", True, True), Sample(1.55, "ctrl-a", True, False),
                 Sample(1.8, "ctrl-a", True, False)]
    assert not two_writers(preempted)
    # a frozen writer that resumes still AO and registered while b serves: caught
    resumed = [*handover, Sample(9.0, "ctrl-a", True, True)]
    assert two_writers(resumed)
    fenced = [Sample(1.0, "ctrl-a", True, False), Sample(1.2, "ctrl-b", True, True)]  # a's key preempted
    assert not two_writers(fenced)


def test_each_check_reports_its_violation():
    bad = {**GOOD, "writes_lost": 3, "io_errors": 2, "io_pause_s": 9.0,
           "scsi_conditions": {"ILLEGAL REQUEST 05/25/00: LOGICAL UNIT NOT SUPPORTED": 1}}
    v = judge(bad, [], (4, 7), BUDGET)
    text = " | ".join(v.violations)
    for words in ("PDL-class", "writes lost", "I/O errors", "paused 9.00 s", "3 takeovers"):
        assert words in text, (words, text)
    assert not judge({**GOOD, "writes_acknowledged": 0}, [], (4, 5), BUDGET).ok


def test_report_lists_violations_with_seeds_and_plots(tmp_path):
    from tests.chaos.report import markdown, percentile, plot

    trials = [{"fault": "kill-agent", "seed": 7, "index": i, "io_pause_s": 2.0 + i / 10, "io_errors": 0,
               "phases": {"detect": 2.0, "fenced": 2.1, "alua": 2.11, "vips": 2.2, "first_io": 2.4},
               "violations": []} for i in range(5)]
    trials.append({"fault": "freeze-vm", "seed": 7, "index": 5, "io_pause_s": 9.0, "io_errors": 1, "phases": {},
                   "violations": ["I/O paused 9.00 s, budget 4.00 s"]})
    text = markdown(trials)
    assert "6 trials" in text and "**1 with invariant violations**" in text
    assert "| kill-agent | 5 | 2.00 / 2.00 |" in text
    assert "seed 7 trial 5 (freeze-vm): I/O paused 9.00 s" in text
    assert percentile([1, 2, 3, 4], 50) == 2.5
    png = tmp_path / "pause.png"
    if plot(trials, png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_slower_host_stretches_the_pause_budget_and_a_faster_one_keeps_it():
    from tests.chaos.campaign import slowed

    budget = Budget(io_pause_s=2.0, epoch_changes=(1, 1))
    assert slowed(budget, 1.64).io_pause_s == 3.28
    assert slowed(budget, 0.8) == budget
    assert slowed(budget, 1.64).epoch_changes == (1, 1)


def test_a_trial_is_credited_only_with_the_takeover_that_made_the_current_leader():
    """partition-zk: the active led again under a new epoch without a takeover; the last failover record to
    it is an earlier trial's and must not be reported as this one's detection or phases."""
    from types import SimpleNamespace

    from tests.chaos.campaign import detected_by, phases
    from tests.chaos.rigchaos import Mark

    earlier = {"kind": "failover", "to": "ctrl-a", "epoch": 2, "detected_by": "peer_link",
               "phases": {"detect": 0.0, "claimed": 0.1, "fenced": 0.2}}
    cluster = SimpleNamespace(history=lambda: [earlier])
    relead = {"leader": {"node": "ctrl-a", "epoch": 3, "created_on_zookeeper": 100.0}, "epoch": 3}
    assert detected_by(cluster, relead, True) is None
    mark = Mark("partition-zk", wall=90.0)
    assert phases(cluster, mark, {}, relead, True)["detect"] is None
    took_over = {"leader": {"node": "ctrl-a", "epoch": 2, "created_on_zookeeper": 100.0}, "epoch": 2}
    assert detected_by(cluster, took_over, True) == "peer_link"
    assert phases(cluster, mark, {}, took_over, True)["fenced"] == 10.1
