"""What an ESXi host must never see, checked on every chaos trial (pure functions over what was recorded).

Inputs: the probe initiator's report (what the initiator saw), the controller samples the monitor took
during the trial (each controller's own ALUA state and whether its reservation key was on the shared disks),
the cluster's history and epochs before/after, and the fault's budget.

Each check returns a list of violations (sentences); an empty list is a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Sense codes after which ESXi declares Permanent Device Loss (the datastore is dropped).
PDL_SENSE = ("05/25/00",)  # LOGICAL UNIT NOT SUPPORTED
PDL_LOGIN = ("target removed", "not found", "0x0301", "target unavailable")  # iSCSI login status classes


@dataclass(frozen=True)
class Sample:
    """One controller, once: what LIO and the disks said (None: could not be read, e.g. VM frozen or off)."""

    t: float  # host monotonic seconds
    node: str
    own_ao: bool | None  # own group Active/Optimized (or a hosted peer group AO) with an enabled TPG
    registered: bool | None  # this controller's key is registered on every shared disk


@dataclass(frozen=True)
class Budget:
    io_pause_s: float  # the longest I/O pause allowed for this fault
    epoch_changes: tuple[int, int]  # allowed (min, max) number of takeovers during the trial
    io_errors_allowed: bool = False  # e.g. quorum loss: I/O may stop; errors still counted


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def two_writers(samples: Sequence[Sample], slack_s: float = 0.5) -> list[str]:
    """Never two controllers that are AO *and* registered (writes accepted) at the same time.

    Samples are timestamped when they reach the host, after an ssh hop from a busy VM, so a sample can arrive a
    few hundred milliseconds late and two controllers' samples are never simultaneous. A controller therefore
    counts as a writer at the moment of the other's writer sample only if it said "writer" in its last sample
    before that moment *and* in every sample up to at least ``slack_s`` after it. So a hand-over between two
    samples (fence, then the new side goes AO), a late sample from before the fence, or a controller that went
    dark (powered off) is not two writers; an overlap that lasts longer than ``slack_s`` plus a sampling period
    is caught.
    """
    by_node: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.t):
        by_node.setdefault(s.node, []).append(s)
    if len(by_node) < 2:
        return []
    (a, sa), (b, sb) = sorted(by_node.items())[:2]
    out = []
    for mine, theirs in ((sa, sb), (sb, sa)):
        for y in mine:
            if not _writer(y):
                continue
            before = [x for x in theirs if x.t <= y.t][-1:]
            span = [x for x in theirs if y.t < x.t]
            upto = next((i for i, x in enumerate(span) if x.t >= y.t + slack_s), None)
            if before and upto is not None and all(_writer(x) for x in (*before, *span[:upto + 1])):
                out.append(f"t={y.t:.2f}: {a} and {b} both Active/Optimized with their keys registered")
    return sorted(set(out))[:5]


def _writer(s: Sample) -> bool:
    return bool(s.own_ao and s.registered)


def pdl(report: dict[str, Any]) -> list[str]:
    out = []
    for cond in report.get("scsi_conditions", {}):
        if any(code in cond for code in PDL_SENSE):
            out.append(f"PDL-class sense seen by the initiator: {cond}")
    for e in report.get("errors", []):
        if e.get("kind") == "login_failed" and any(w in str(e.get("detail", "")).lower() for w in PDL_LOGIN):
            out.append(f"login refused in a PDL-class way: {e.get('detail')}")
            break
    return out


def data(report: dict[str, Any]) -> list[str]:
    out = []
    if report.get("writes_lost", 0):
        out.append(f"{report['writes_lost']} acknowledged writes lost (or overwritten by stale data)")
    if not report.get("verification_complete", False):
        out.append(f"verification incomplete: {report.get('verification_detail')}")
    if report.get("writes_acknowledged", 0) == 0:
        out.append("the initiator acknowledged no write at all: the trial measured nothing")
    return out


def errors(report: dict[str, Any], budget: Budget) -> list[str]:
    if budget.io_errors_allowed or not report.get("io_errors"):
        return []
    return [f"{report['io_errors']} I/O errors reached the application: {sorted(report.get('scsi_conditions', {}))}"]


def resumed(report: dict[str, Any], budget: Budget) -> list[str]:
    pause = float(report.get("io_pause_s", 0.0))
    return [] if pause <= budget.io_pause_s else [f"I/O paused {pause:.2f} s, budget {budget.io_pause_s:.2f} s"]


def flapping(epoch_before: int, epoch_after: int, budget: Budget) -> list[str]:
    changes = epoch_after - epoch_before
    low, high = budget.epoch_changes
    if low <= changes <= high:
        return []
    return [f"{changes} takeovers during the trial (expected {low}–{high})"]


def judge(report: dict[str, Any], samples: Sequence[Sample], epochs: tuple[int, int], budget: Budget) -> Verdict:
    v = Verdict()
    v.violations += two_writers(samples)
    v.violations += pdl(report)
    v.violations += data(report)
    v.violations += errors(report, budget)
    v.violations += resumed(report, budget)
    v.violations += flapping(epochs[0], epochs[1], budget)
    return v
