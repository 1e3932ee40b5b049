"""The peer link in the local lab, measured (a benchmark, not a test: it prints figures, it asserts nothing).

    .venv/bin/python tests/bench/bench_peer_link.py failover [--runs 20]      # link vs session expiry
    .venv/bin/python tests/bench/bench_peer_link.py loss [--seconds 600]      # 10 % loss on one path
    .venv/bin/python tests/bench/bench_peer_link.py zk-outage [--seconds 300] # the ensemble stopped

Needs root (the lab: namespaces, tgtd). Each part brings the lab up (hactl lab), runs the libiscsi probe
initiator in the client namespace (a write every 10 ms, every write verified at the end), and tears the lab
down afterwards.

- failover: for each mode (peer link on; off, i.e. ZooKeeper session expiry), ``--runs`` times: kill -9 of
  the active controller's agent and tgtd, the survivor takes over, the killed one is started again and rejoins;
  from the kill to the probe's first good I/O after its longest pause, median and p99 (linear interpolation;
  with 20 runs the p99 is close to the slowest run), the takeover's phases from the survivor's history.
- loss: 10 % of the UDP heartbeats on path 1 (the data segment) dropped in both directions by nftables for
  ``--seconds``, under I/O: takeovers (epoch changes) and I/O errors are counted.
- zk-outage: every ZooKeeper member stopped for ``--seconds`` under I/O, then started again: I/O errors,
  epoch changes, whether the active kept serving (failsafe), and how long until both agents had sessions
  again and the active led again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hacontrol.lab.demo import Demo, _timeline, other
from hacontrol.lab.lab import DEFAULT_DIR, NODES, Lab
from tests.chaos.report import percentile

PEER_PORT = 7405
RUN_SETTLE_S = 2.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lab_up(link: bool) -> tuple[Lab, Demo, str]:
    lab = Lab(Path(DEFAULT_DIR), peer_link=link)
    demo = Demo(lab, say)
    lab.up()
    return lab, demo, demo.wait("one active controller", demo.active, 60)


def _standby_ready(demo: Demo, node: str) -> bool:
    doc = demo.status()
    n = next((n for n in doc.get("nodes", []) if n["node"] == node), None)
    return bool(n and n["role"] == "standby" and n["ready"] and doc.get("automatic_failover", {}).get("possible"))


def failover_runs(link: bool, runs: int) -> list[dict[str, Any]]:
    lab, demo, active = lab_up(link)
    results = []
    try:
        for i in range(runs):
            survivor = other(active)
            proc, stop = demo.start_probe(f"run{i}", duration_s=120)
            time.sleep(RUN_SETTLE_S)
            t_kill = time.time()
            lab.kill(active)
            demo.wait(f"{survivor} active", lambda s=survivor: demo.active(s), 60)
            time.sleep(RUN_SETTLE_S)
            report = demo.stop_probe(f"run{i}", proc, stop)
            record = demo._last_history(lambda e, s=survivor: e.get("kind") == "failover" and e.get("to") == s)
            r = _timeline(t_kill, record, report)
            results.append(r)
            say(f"{'link' if link else 'zookeeper'} run {i + 1}/{runs}: first good I/O {r['first_good_io_s']} s, "
                f"pause {r['io_pause_s']:.3f} s, errors {r['io_errors']}, detected by {r['detected_by']}")
            lab.start_node(active)
            demo.wait(f"{active} to rejoin", lambda a=active: _standby_ready(demo, a), 90)
            active = survivor
    finally:
        lab.down()
    return results


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} / {percentile(values, 99):.3f}" if values else "-"


def failover(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for link in (True, False):
        runs = failover_runs(link, args.runs)
        key = "peer_link" if link else "session_expiry"
        firsts = [r["first_good_io_s"] for r in runs if r["first_good_io_s"] is not None]
        out[key] = {
            "runs": len(runs),
            "first_good_io_s": cell(firsts),
            "io_pause_s": cell([r["io_pause_s"] for r in runs]),
            "fully_active_s": cell([r["failover_s"] for r in runs if r["failover_s"] is not None]),
            "detect_s": cell([r["phases_s"]["detect"] for r in runs if "detect" in r["phases_s"]]),
            "io_errors": sum(r["io_errors"] for r in runs),
            "writes_lost": sum(r["writes_lost"] for r in runs),
            "detected_by": sorted({r["detected_by"] for r in runs}),
            "first_good_io_each_s": firsts,
        }
    print("\nunplanned failover (kill -9 of the active's agent and tgtd), seconds from the kill, median / p99")
    print(f"{'detection':<16} {'runs':>4} {'detect':>15} {'fully active':>15} {'first good I/O':>15} "
          f"{'longest pause':>15} {'errors':>6} {'lost':>5}")
    for key, row in out.items():
        print(f"{key:<16} {row['runs']:>4} {row['detect_s']:>15} {row['fully_active_s']:>15} "
              f"{row['first_good_io_s']:>15} {row['io_pause_s']:>15} {row['io_errors']:>6} {row['writes_lost']:>5}")
    return out


def _epoch(demo: Demo) -> int | None:
    return demo.status().get("epoch")


def _nft(ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, check=True, timeout=10)


def loss(args: argparse.Namespace) -> dict[str, Any]:
    lab, demo, active = lab_up(True)
    try:
        state = lab.state()
        epoch = _epoch(demo)
        for node in NODES:  # path 1 is the data segment: drop 10 % of the heartbeats arriving on it, both ways
            peer_ip = state["addresses"][other(node)].split("/")[0]
            _nft(state["netns"][node], "table inet hclabloss {\n chain in {\n type filter hook input priority 0;\n"
                 f" ip saddr {peer_ip} udp dport {PEER_PORT} numgen random mod 10 0 drop\n }}\n}}\n")
        proc, stop = demo.start_probe("loss", duration_s=args.seconds + 60)
        say(f"10 % loss on path 1 for {args.seconds} s under I/O (active {active}, epoch {epoch}) ...")
        time.sleep(args.seconds)
        report = demo.stop_probe("loss", proc, stop)
        doc = demo.status()
        link = next(n for n in doc["nodes"] if n["node"] == other(active))["peer_link"] or {}
        result = {"seconds": args.seconds, "epoch_before": epoch, "epoch_after": doc.get("epoch"),
                  "takeovers": (doc.get("epoch") or 0) - (epoch or 0), "active_after": demo.active(),
                  "io_errors": report["io_errors"], "writes_lost": report["writes_lost"],
                  "io_pause_s": report["io_pause_s"], "writes_acknowledged": report["writes_acknowledged"],
                  "standby_link_counters": link.get("counters")}
    finally:
        lab.down()
    print(json.dumps(result, indent=2))
    return result


def zk_outage(args: argparse.Namespace) -> dict[str, Any]:
    lab, demo, active = lab_up(True)
    try:
        epoch = _epoch(demo)
        proc, stop = demo.start_probe("zk-outage", duration_s=args.seconds + 120)
        time.sleep(RUN_SETTLE_S)
        say(f"ZooKeeper ensemble stopped for {args.seconds} s under I/O (active {active}, epoch {epoch}) ...")
        lab.zk_stop()
        t_stop = time.monotonic()
        local = demo.hactl("status", timeout=30)
        time.sleep(max(0.0, args.seconds - (time.monotonic() - t_stop)))
        lab.zk_start()
        t_start = time.monotonic()
        resumed = demo.wait("the active leading again with both sessions", lambda: _normal(demo), 120)
        back_s = time.monotonic() - t_start
        time.sleep(RUN_SETTLE_S)
        report = demo.stop_probe("zk-outage", proc, stop)
        result = {"seconds": args.seconds, "epoch_before": epoch, "epoch_after": resumed.get("epoch"),
                  "active_before": active, "active_after": demo.active(), "normal_again_after_s": round(back_s, 2),
                  "io_errors": report["io_errors"], "writes_lost": report["writes_lost"],
                  "io_pause_s": report["io_pause_s"], "writes_acknowledged": report["writes_acknowledged"],
                  "hactl_status_during_outage": {"exit": local.returncode, "out": local.stdout.strip()[-1500:]}}
    finally:
        lab.down()
    print(json.dumps(result, indent=2))
    return result


def _normal(demo: Demo) -> dict[str, Any] | None:
    doc = demo.status()
    sessions = [n for n in doc.get("nodes", []) if n.get("live_session")]
    return doc if doc.get("leader") and len(sessions) == 2 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("failover")
    f.add_argument("--runs", type=int, default=20)
    for name, default in (("loss", 600), ("zk-outage", 300)):
        sub.add_parser(name).add_argument("--seconds", type=float, default=default)
    ap.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (the lab)", file=sys.stderr)
        return 2
    result = {"failover": failover, "loss": loss, "zk-outage": zk_outage}[args.what](args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
