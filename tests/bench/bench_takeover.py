"""Takeover time of two real agents against a real 3-member ZooKeeper ensemble (a benchmark, not a test).

    sudo .venv/bin/python tests/bench/bench_takeover.py [--runs 5] [--timeouts 2,4,10]

For each session timeout and each fault (kill -9 of the active agent; the active partitioned from
ZooKeeper), repeat: start both agents (recording doubles for target, addresses and disks), wait for one
active, inject the fault, and measure from the fault to the moment the survivor holds the VIP (from the
doubles' logs, monotonic clock). Also checks, every run, that no two controllers accepted writes at once
and, for the partition, how long after the cut the partitioned active stopped serving.
Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hacontrol.lab.zookeeper import Ensemble
from tests.integration.agentkit import NODES, AgentPair, overlaps, writable_intervals


def timing_for(session_s: float) -> dict[str, float]:
    loop = min(0.1 * session_s / 2, 0.5)
    op = min(0.2 * session_s / 2, 1.0)
    return {"session_timeout_s": session_s, "loop_interval_s": loop, "demote_deadline_s": session_s / 2,
            "watchdog_margin_s": max(0.4, loop + op), "operation_timeout_s": op, "fence_retry_s": 0.5,
            "standby_settle_s": 0.3, "switchover_timeout_s": max(20.0, 4 * session_s), "startup_grace_s": 5.0}


def one_run(ens: Ensemble, work: Path, session_s: float, fault: str) -> dict[str, float | bool]:
    pair = AgentPair(ens, f"/bench/{uuid.uuid4().hex[:8]}", work, fencing=("scsi_pr", "command"),
                     timing=timing_for(session_s))
    try:
        pair.start_all()
        active = pair.active_steady()
        survivor = next(n for n in NODES if n != active)
        time.sleep(0.5)
        t0 = time.monotonic()
        if fault == "kill9":
            pair.kill(active)
        else:
            pair.partition(active)
        claim = pair.wait_for(lambda: next((c["t"] for c in pair.calls(survivor)
                                            if c["call"] == "claim" and c["t"] > t0), None),
                              6 * session_s + 20, "the survivor to claim the VIP")
        result: dict[str, float | bool] = {"takeover_s": claim - t0}
        if fault == "partition":
            down = next((c["t"] for c in pair.calls(active) if c["t"] > t0 and c["call"] == "set_alua"
                         and c["own"] == "standby"), None)
            result["step_down_s"] = (down - t0) if down else float("nan")
            pair.partition(active, cut=False)
        result["two_writers"] = bool(overlaps(writable_intervals(pair, time.monotonic())))
        return result
    finally:
        pair.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeouts", default="2,4,10")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-takeover-") as tmp:
        ens = Ensemble(Path(tmp) / "zk", tick_ms=250, min_session_ms=500, max_session_ms=20000).start()
        try:
            for session_s in (float(x) for x in args.timeouts.split(",")):
                for fault in ("kill9", "partition"):
                    results = [one_run(ens, Path(tmp) / f"{session_s}-{fault}-{i}", session_s, fault)
                               for i in range(args.runs)]
                    rows.append((session_s, fault, results))
                    print(f"S={session_s:g}s {fault}: " + ", ".join(f"{r['takeover_s']:.2f}" for r in results),
                          file=sys.stderr, flush=True)
        finally:
            ens.close()
    print(f"\n{'session':>8} {'fault':>10} {'runs':>4} {'takeover median':>16} {'max':>7} {'bound S+loop+0.5':>17}"
          f" {'step-down median':>17} {'two writers':>12}")
    for session_s, fault, results in rows:
        times = [float(r["takeover_s"]) for r in results]
        bound = session_s + timing_for(session_s)["loop_interval_s"] + 0.5
        downs = [float(r["step_down_s"]) for r in results if "step_down_s" in r]
        down = f"{statistics.median(downs):.2f} s" if downs else "-"
        print(f"{session_s:>7g}s {fault:>10} {len(times):>4} {statistics.median(times):>15.2f}s "
              f"{max(times):>6.2f}s {bound:>16.2f}s {down:>17} {sum(bool(r['two_writers']) for r in results):>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
