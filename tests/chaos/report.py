"""Campaign report: markdown (trial count, per-fault timing table, violations with seeds) and a PNG plot.

Input: the trial records a campaign wrote, one JSON object per line (``trials.jsonl``), possibly accumulated
over several runs. Times are seconds from the fault.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PHASES = ("detect", "fenced", "alua", "vips", "first_io")


def load(paths: Iterable[Path]) -> list[dict[str, Any]]:
    trials = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                trials.append(json.loads(line))
    return trials


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):.2f} / {percentile(values, 99):.2f}"


def markdown(trials: Sequence[dict[str, Any]], title: str = "Chaos campaign") -> str:
    by_fault: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in trials:
        by_fault[t["fault"]].append(t)
    violations = [t for t in trials if t.get("violations")]
    seeds = sorted({t["seed"] for t in trials})
    lines = [f"# {title}", "",
             f"{len(trials)} trials, seeds {', '.join(map(str, seeds))}; "
             f"**{len(violations)} with invariant violations**.", "",
             "Times in seconds from the fault (median / p99). `pause` is the initiator's longest I/O pause.", "",
             "| fault | trials | detect | fenced | ALUA | VIPs | first good I/O | pause | I/O errors | violations |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for fault, ts in sorted(by_fault.items()):
        cols = [_cell(_values(ts, p)) for p in PHASES]
        pauses = _pauses(ts)
        errors = sum(int(t.get("io_errors", 0)) for t in ts)
        bad = sum(1 for t in ts if t.get("violations"))
        lines.append(f"| {fault} | {len(ts)} | {' | '.join(cols)} | {_cell(pauses)} | {errors} | {bad} |")
    if violations:
        lines += ["", "## Violations (reproduce with `--seed S --only-trial I`)", ""]
        for t in violations:
            lines.append(f"- seed {t['seed']} trial {t['index']} ({t['fault']}): " + "; ".join(t["violations"]))
    return "\n".join(lines) + "\n"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def baseline_markdown(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> str:
    """Per fault: hacontrol's trials beside the Pacemaker baseline's (one row per profile), and the ratio
    hacontrol / Pacemaker of the medians (first good I/O after the fault, and the longest I/O pause)."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for t in ours:
        rows[(t["fault"], "hacontrol")].append(t)
    for t in theirs:
        rows[(t["fault"], f"pacemaker/{t.get('profile', '?')}")].append(t)
    faults = sorted({t["fault"] for t in theirs})
    lines = ["## Against the Pacemaker baseline", "",
             "Same rig, same probe initiator, same faults (tests/chaos/pacemaker.py). Seconds, median / p99; "
             "ratio = hacontrol median / Pacemaker median (below 1: hacontrol is faster).", "",
             "| fault | stack | trials | first good I/O | pause | I/O errors | writes lost | ratio first I/O | "
             "ratio pause |", "|---|---|---|---|---|---|---|---|---|"]
    for fault in faults:
        mine = rows.get((fault, "hacontrol"), [])
        my_first = _median(_values(mine, "first_io"))
        my_pause = _median(_pauses(mine))
        for stack in ["hacontrol", *sorted(k[1] for k in rows if k[0] == fault and k[1] != "hacontrol")]:
            ts = rows.get((fault, stack), [])
            if not ts:
                continue
            first = _values(ts, "first_io")
            pause = _pauses(ts)
            ratio_first = _ratio(my_first, _median(first)) if stack != "hacontrol" else "–"
            ratio_pause = _ratio(my_pause, _median(pause)) if stack != "hacontrol" else "–"
            lines.append(f"| {fault} | {stack} | {len(ts)} | {_cell(first)} | {_cell(pause)} | "
                         f"{sum(int(t.get('io_errors') or 0) for t in ts)} | "
                         f"{sum(int(t.get('writes_lost') or 0) for t in ts)} | {ratio_first} | {ratio_pause} |")
    return "\n".join(lines) + "\n"


def _values(trials: Sequence[dict[str, Any]], phase: str) -> list[float]:
    return [t["phases"][phase] for t in trials if (t.get("phases") or {}).get(phase) is not None]


def _pauses(trials: Sequence[dict[str, Any]]) -> list[float]:
    return [float(t["io_pause_s"]) for t in trials if t.get("io_pause_s") is not None]


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}" if ours is not None and theirs else "–"


def plot(trials: Sequence[dict[str, Any]], path: Path) -> bool:
    """A box plot of the initiator's longest I/O pause per fault type; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by_fault: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in trials:
        by_fault[t["fault"]].append(t)
    names = sorted(by_fault)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4.5), dpi=110)
    ax.boxplot([_pauses(by_fault[n]) for n in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("longest I/O pause at the initiator (s)")
    ax.set_title(f"I/O pause per fault type ({len(trials)} trials)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
