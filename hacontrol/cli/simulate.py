"""hactl simulate: run the real decision core against the simulated pair and print what each agent did.

It answers "what would the controllers do if ..." without touching anything:
the same decide() that runs in production, driven through a fault scenario in
the model that the safety invariants are checked against after every tick.
"""

from __future__ import annotations

import argparse
from typing import Any

from hacontrol.cli.common import FAILED, OK, emit_json
from hacontrol.core.timing import Timing
from hacontrol.simulation.cluster import Cluster, Profile
from hacontrol.simulation.invariants import SAFETY, Violation, fully_active

SCENARIOS = {
    "kill-agent": "kill -9 the active agent (its kernel target keeps serving until fenced or reset)",
    "freeze": "SIGSTOP the active agent for twice the session timeout, then let it resume",
    "partition": "cut the active controller off from ZooKeeper",
    "power-off": "power the active controller off",
    "switchover": "planned switchover to the standby",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="run a fault scenario through the decision core (no side effects)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--session-timeout", type=float, default=2.0)
    p.add_argument("--no-watchdog", action="store_true", help="controllers without a hardware watchdog")
    p.add_argument("--power-fencing", action="store_true", help="add power fencing after reservations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    s = args.session_timeout
    timing = Timing(session_timeout_s=s, loop_interval_s=min(0.1, s / 10), demote_deadline_s=s / 2,
                    watchdog_margin_s=max(0.4, s / 5), operation_timeout_s=min(0.2, s / 10))
    cl = Cluster(timing, Profile(pr=True, alua=True, power_fencing=args.power_fencing,
                                 hardware_watchdog=not args.no_watchdog))
    cl.checks.extend(SAFETY)
    verdict = "safe"
    try:
        cl.advance(1.0)
        active = fully_active(cl)[0]
        mark = len(cl.log)
        t0 = cl.now
        _inject(cl, args.scenario, active)
        cl.advance(3 * s + 2)
        if args.scenario == "freeze":
            cl.advance(2.0)
    except (Violation, IndexError) as exc:
        verdict = f"VIOLATION: {exc}"
        mark, t0, active = 0, 0.0, "?"
    events = [{"t": round(t - t0, 3), "node": n, "event": e} for t, n, e in cl.log[mark:]
              if "KickWatchdog" not in e and e != "Publish"]
    doc = {"scenario": args.scenario, "description": SCENARIOS[args.scenario], "failed_node": active,
           "active_after": fully_active(cl), "epoch": cl.zk.epoch, "verdict": verdict, "events": events}
    if args.json:
        emit_json(doc)
    else:
        print(f"{args.scenario}: {SCENARIOS[args.scenario]} (session timeout {s} s)")
        for e in events:
            print(f"  t={e['t']:+7.2f}s  {e['node']}  {e['event']}")
        print(f"active after: {', '.join(doc['active_after']) or 'none'} (epoch {cl.zk.epoch}); invariants: {verdict}")
    return OK if verdict == "safe" else FAILED


def _inject(cl: Cluster, scenario: str, node: str) -> None:
    if scenario == "kill-agent":
        cl.crash_agent(node)
    elif scenario == "freeze":
        cl.freeze(node, 2 * cl.timing.session_timeout_s)
    elif scenario == "partition":
        cl.nodes[node].zk_reachable = False
    elif scenario == "power-off":
        cl.power_cycle(node)
    else:
        cl.request_switchover(cl.peer_of(node).name)
