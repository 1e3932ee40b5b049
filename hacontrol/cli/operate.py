"""hactl failover, maintenance and history: operator intents and what came of them."""

from __future__ import annotations

import argparse
import time
from typing import Any

from hacontrol.adapters.zookeeper.admin import IntentRefused
from hacontrol.cli.common import (
    OK,
    REFUSED,
    TIMEOUT,
    UNKNOWN_NODE,
    CliError,
    add_common,
    admin,
    emit_json,
    table,
    who,
)

FAILOVER_HELP = """Planned switchover: move the active role to NODE (default: the current standby).

hactl writes a switchover intent to ZooKeeper and follows it. The active controller checks that the target
is a healthy standby, then hands over in order (its ports Transitioning, connections cut, VIPs removed,
leadership released); the target claims a new epoch, takes the disks' reservation, sets its ports
Active/Optimized and brings the VIPs up. hactl exits when the target is active.

Exit status: 0 when NODE is active; 5 when the cluster refused (the reason is printed: target not ready,
maintenance mode, no live session, another switchover pending); 6 on timeout; 4 for an unknown node;
3 when ZooKeeper is unreachable."""

MAINT_HELP = """Maintenance mode freezes automation on both controllers: no takeover, no hand-over, no re-promotion.
Safety is never frozen: an active controller that loses its ZooKeeper lease still stops serving.
While it is on, `hactl status` shows what each agent would have done."""


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("failover", help="planned switchover to the other controller", description=FAILOVER_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--to", metavar="NODE", help="the controller that should become active")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait (default timing.switchover_timeout_s)")
    p.set_defaults(func=failover)

    m = sub.add_parser("maintenance", help="freeze or resume automatic failover", description=MAINT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("state", choices=("on", "off", "show"))
    add_common(m)
    m.add_argument("--reason", default="", help="why (shown in status and history)")
    m.set_defaults(func=maintenance)

    h = sub.add_parser("history", help="past failovers and switchovers with their phase timings")
    add_common(h)
    h.add_argument("--limit", type=int, default=20)
    h.set_defaults(func=history)


def failover(args: argparse.Namespace) -> int:
    with admin(args) as (adm, cfg):
        view = adm.view()
        names = cfg.node_names
        if args.to is not None and args.to not in names:
            raise CliError(f"unknown node {args.to!r}; controllers are {', '.join(names)}", UNKNOWN_NODE)
        if view.leader is None:
            raise CliError("no controller is active: nothing to switch over (see hactl status)", REFUSED)
        target = args.to or next(n for n in names if n != view.leader.node)
        if target == view.leader.node:
            _done(args, {"result": "done", "active": target, "epoch": view.epoch, "note": "already active"})
            return OK
        if view.maintenance.enabled:
            raise CliError(f"maintenance mode is on ({view.maintenance.reason}); run `hactl maintenance off` first",
                           REFUSED)
        timeout = args.timeout if args.timeout is not None else cfg.timing.switchover_timeout_s
        try:
            intent = adm.request_switchover(target, timeout, who())
        except IntentRefused as exc:
            raise CliError(str(exc), REFUSED) from exc
        return _follow(args, adm, intent.intent_id, target=target, epoch_before=view.epoch, timeout=timeout,
                       requested_at=intent.at)


def _follow(args: argparse.Namespace, adm: Any, intent_id: str, *, target: str, epoch_before: int,
            timeout: float, requested_at: float) -> int:
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        intent = adm.switchover()
        if intent is None or intent.intent_id != intent_id:
            raise CliError("the switchover intent was replaced by another operator", REFUSED)
        if intent.state == "refused":
            raise CliError(f"switchover refused: {intent.reason}", REFUSED)
        if intent.state == "done":
            view = adm.view()
            _done(args, {"result": "done", "active": target, "epoch": view.epoch, "epoch_before": epoch_before,
                         "intent": intent_id, "elapsed_s": round(time.monotonic() - start, 3),
                         "requested_at": requested_at})
            return OK
        time.sleep(0.05)
    adm.expire_switchover(intent_id, f"hactl gave up after {timeout:.0f} s")
    raise CliError(f"switchover to {target} did not complete within {timeout:.0f} s (see hactl status)", TIMEOUT)


def _done(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json:
        emit_json(doc)
    else:
        extra = f" in {doc['elapsed_s']:.2f} s" if "elapsed_s" in doc else f" ({doc.get('note', '')})"
        print(f"{doc['active']} is active (epoch {doc['epoch']}){extra}")


def maintenance(args: argparse.Namespace) -> int:
    with admin(args) as (adm, _cfg):
        doc = adm.view().maintenance if args.state == "show" else adm.set_maintenance(args.state == "on", args.reason,
                                                                                       who())
        would = {name: m.doc.get("frozen", []) for name, m in adm.view().members.items()}
    out = {"enabled": doc.enabled, "reason": doc.reason, "by": doc.by, "at": doc.at, "would_have_done": would}
    if args.json:
        emit_json(out)
        return OK
    print(f"maintenance {'on' if doc.enabled else 'off'}" + (f": {doc.reason}" if doc.reason else ""))
    for name, actions in sorted(would.items()):
        if actions:
            print(f"  {name} would have done: {', '.join(actions)}")
    return OK


def history(args: argparse.Namespace) -> int:
    with admin(args) as (adm, _cfg):
        events = adm.history(args.limit)
    if args.json:
        emit_json(events)
        return OK
    print(render_history(events))
    return OK


def render_history(events: list[dict[str, Any]]) -> str:
    if not events:
        return "no failovers recorded"
    rows = []
    for e in events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("at", 0)))
        if e.get("kind") == "step_down":
            rows.append([when, "step-down", e.get("node"), "", e.get("reason"), _ms(e.get("total_s")), ""])
            continue
        phases = e.get("phases", {})
        line = "  ".join(f"{k} +{v * 1000:.0f}ms" for k, v in phases.items() if k != "detect")
        nodes = f"{e.get('from')} -> {e.get('to')}"
        rows.append([when, e.get("kind"), nodes, e.get("epoch"), "", _ms(e.get("total_s")), line])
    return table(["WHEN", "KIND", "NODES", "EPOCH", "REASON", "TOTAL", "PHASES (from detection)"], rows)


def _ms(seconds: Any) -> str:
    return "-" if seconds is None else f"{float(seconds) * 1000:.0f} ms"
