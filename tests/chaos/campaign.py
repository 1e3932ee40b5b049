"""The chaos campaign on the VM rig: randomized faults, SCSI-visible invariants, a report.

    sudo .venv/bin/python -m tests.chaos.campaign --trials 200 --seed 1 [--out .chaos] [--deploy]
    sudo .venv/bin/python -m tests.chaos.campaign --seed 1 --only-trial 17          # reproduce trial 17
    sudo .venv/bin/python -m tests.chaos.campaign --report .chaos                   # rebuild the report

Trial i of seed S draws its fault and timings from Random(f"{S}:{i}"), so any trial is reproducible from its
seed and index. Each trial appends one JSON line to OUT/trials.jsonl (so runs accumulate); the report
(OUT/report.md and OUT/pause.png) covers every trial in that file. The rig must be up (`vagrant/rig up`);
--deploy installs the hacontrol configuration and starts the agents first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "vagrant"))
sys.path.insert(0, str(ROOT))

from rigctl import Rig, agents  # noqa: E402 - after the sys.path lines

from tests.chaos import report as report_mod  # noqa: E402
from tests.chaos.faults import CATALOG, Ctx, Fault  # noqa: E402
from tests.chaos.invariants import Budget, judge  # noqa: E402
from tests.chaos.rigchaos import Cluster, Mark, Monitor, Probe, first_io_after  # noqa: E402


def pick(seed: int, index: int, names: list[str]) -> tuple[Fault, random.Random]:
    rng = random.Random(f"{seed}:{index}")
    return CATALOG[rng.choice(sorted(names))], rng


# Where the running trial is and what the checker said last: a failed or timed-out test prints it
# (tests/rig/diagnostics.py).
CURRENT_TRIAL: dict[str, Any] = {}


def run_trial(cluster: Cluster, seed: int, index: int, names: list[str], workdir: Path) -> dict[str, Any]:
    fault, rng = pick(seed, index, names)
    started = time.monotonic()
    CURRENT_TRIAL.clear()
    CURRENT_TRIAL.update(seed=seed, index=index, fault=fault.name, step="restore (waiting for a healthy cluster)")
    active = cluster.restore()
    standby = cluster.peer(active)
    epoch_before = cluster.epoch()
    monitor = Monitor(cluster.rig).start()
    probe = Probe(cluster.rig, workdir, f"s{seed}-t{index}").start()
    time.sleep(rng.uniform(2.0, 4.0))
    mark = Mark(fault.name)
    CURRENT_TRIAL.update(step="fault", active_before=active, epoch_before=epoch_before)
    try:
        fault.run(Ctx(cluster, active, standby, rng), mark)
    except Exception as exc:
        mark.notes.append(f"fault error: {type(exc).__name__}: {exc}")
    CURRENT_TRIAL.update(step="after the fault: stopping the probe and the monitor", notes=mark.notes)
    time.sleep(3.0)
    rep = probe.stop()
    samples = monitor.stop()
    status = cluster.status()
    epoch_after = int(status.get("epoch", epoch_before))
    verdict = judge(rep, samples, (epoch_before, epoch_after), slowed(fault.budget(cluster.session_timeout_s),
                                                                       cluster.rig.speed_factor))
    verdict.violations.extend(mark.violations)
    CURRENT_TRIAL.update(step="judged", violations=verdict.violations, epoch_after=epoch_after,
                         io_pause_s=rep.get("io_pause_s"), io_errors=rep.get("io_errors"),
                         last_samples=[vars(x) for x in samples[-6:]])
    return {
        "seed": seed, "index": index, "fault": fault.name, "params": mark.params, "notes": mark.notes,
        "peer_link": cluster.peer_link, "detected_by": detected_by(cluster, status, epoch_after > epoch_before),
        "active_before": active, "active_after": (status.get("leader") or {}).get("node"),
        "epoch_before": epoch_before, "epoch_after": epoch_after, "io_pause_s": rep.get("io_pause_s"),
        "io_errors": rep.get("io_errors"), "writes_acknowledged": rep.get("writes_acknowledged"),
        "writes_lost": rep.get("writes_lost"), "path_switches": rep.get("path_switches"),
        "scsi_conditions": rep.get("scsi_conditions"), "samples": len(samples),
        "phases": phases(cluster, mark, rep, status, epoch_after > epoch_before),
        "violations": verdict.violations, "duration_s": round(time.monotonic() - started, 1),
    }


def slowed(budget: Budget, speed_factor: float) -> Budget:
    """A budget for this host: the rig's guests are emulated, and on a host that runs them ``speed_factor``
    times slower than the reference every step of a failover (ALUA, addresses, the initiator's retries) takes
    that much longer. A faster host keeps the budget as written."""
    return dataclasses.replace(budget, io_pause_s=round(budget.io_pause_s * max(1.0, speed_factor), 3))


def phases(cluster: Cluster, mark: Mark, rep: dict[str, Any], status: dict[str, Any], changed: bool
           ) -> dict[str, float | None]:
    """Seconds from the fault: detect/fenced/alua/vips from the takeover record, anchored on the leader
    znode's creation time (ZooKeeper runs on the host: same clock as the fault's mark); first good I/O
    from the probe."""
    out: dict[str, float | None] = {p: None for p in report_mod.PHASES}
    leader = status.get("leader") or {}
    created = leader.get("created_on_zookeeper")
    if changed and created:
        records = _takeover_records(cluster, status)
        if records and records[-1].get("phases"):
            ph = records[-1]["phases"]
            claimed = float(created) - mark.wall
            for name in ("detect", "fenced", "alua", "vips"):
                if name in ph and "claimed" in ph:
                    out[name] = round(claimed + float(ph[name]) - float(ph["claimed"]), 3)
    out["first_io"] = first_io_after(rep, mark)
    return out


def detected_by(cluster: Cluster, status: dict[str, Any], changed: bool) -> str | None:
    """How the new active noticed the old one was gone: "peer_link" or "zookeeper" (None: no takeover)."""
    if not changed:
        return None
    records = [r for r in _takeover_records(cluster, status) if r.get("kind") == "failover"]
    return records[-1].get("detected_by", "zookeeper") if records else None


def _takeover_records(cluster: Cluster, status: dict[str, Any]) -> list[dict[str, Any]]:
    """The history records of the takeover that made the current leader: to that node, at that epoch. An
    active that leads again under a new epoch without a takeover (its session expired while it served on the
    peer's promise) has none, and an older takeover to the same node is not this trial's."""
    leader = status.get("leader") or {}
    return [r for r in cluster.history()
            if r.get("to") == leader.get("node") and r.get("epoch") == leader.get("epoch")]


def write_report(out: Path) -> Path:
    trials = report_mod.load([out / "trials.jsonl"])
    md = report_mod.markdown(trials, title=f"Chaos campaign ({len(trials)} trials)")
    if report_mod.plot(trials, out / "pause.png"):
        md += "\n![I/O pause per fault type](pause.png)\n"
    if (out / "baseline.jsonl").exists():  # written by tests/chaos/pacemaker.py
        md += "\n" + report_mod.baseline_markdown(trials, report_mod.load([out / "baseline.jsonl"]))
    (out / "report.md").write_text(md)
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--first", type=int, default=0, help="index of the first trial (to continue a seed)")
    ap.add_argument("--only-trial", type=int, help="run just this trial index (reproduce)")
    ap.add_argument("--faults", default=",".join(sorted(CATALOG)), help="comma-separated subset of the catalog")
    ap.add_argument("--out", type=Path, default=ROOT / ".chaos",
                    help="trials.jsonl, report.md, pause.png (outside .rig/, which `vagrant/rig down` clears)")
    ap.add_argument("--deploy", action="store_true", help="install the configuration and start the agents first")
    ap.add_argument("--report", type=Path, help="only rebuild the report of this folder")
    args = ap.parse_args(argv)
    if args.report:
        print(write_report(args.report))
        return 0
    names = [n for n in args.faults.split(",") if n]
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        ap.error(f"unknown faults {unknown}; the catalog: {', '.join(sorted(CATALOG))}")
    rig = Rig(quiet=True)
    if args.deploy:
        for node in rig.controllers:  # an earlier campaign's last trial may have left its fenced VM powered off
            rig.ensure_running(node)
        agents.deploy(rig, agents.config_text(rig))
        agents.start(rig)
    cluster = Cluster(rig)
    args.out.mkdir(parents=True, exist_ok=True)
    indexes = [args.only_trial] if args.only_trial is not None else range(args.first, args.first + args.trials)
    bad = 0
    for i in indexes:
        result = run_trial(cluster, args.seed, i, names, args.out / "probes")
        with open(args.out / "trials.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        bad += bool(result["violations"])
        print(f"trial {i} {result['fault']}: pause {result['io_pause_s']} s, errors {result['io_errors']}, "
              f"lost {result['writes_lost']}, epochs {result['epoch_before']}->{result['epoch_after']}, "
              f"{'OK' if not result['violations'] else 'VIOLATION: ' + '; '.join(result['violations'])}",
              flush=True)
    print(write_report(args.out))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
