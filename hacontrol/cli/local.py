"""hactl local: act on this controller only, without ZooKeeper (systemd's ExecStopPost uses it).

    hactl local step-down   stop serving here now: own ports Standby, VIPs and adopted portals removed
                            (connections cut first), watchdog disarmed. Never unmaps a LUN.
"""

from __future__ import annotations

import argparse
from typing import Any

from hacontrol.agent.main import resolve_node, step_down_here
from hacontrol.cli.common import FAILED, OK, UNKNOWN_NODE, CliError, emit_json, load_config
from hacontrol.config import DEFAULT_PATH


def add_parser(sub: Any) -> None:
    p = sub.add_parser("local", help="act on this controller only (no ZooKeeper)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    lsub = p.add_subparsers(dest="local_verb", required=True)
    s = lsub.add_parser("step-down", help="stop serving on this controller now")
    s.add_argument("--config", default=DEFAULT_PATH)
    s.add_argument("--node", help="this controller's name (default: $HACONTROL_NODE or the host name)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=step_down)


def step_down(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    try:
        node = resolve_node(cfg.node_names, args.node)
    except LookupError as exc:
        raise CliError(str(exc), UNKNOWN_NODE) from exc
    results = step_down_here(cfg, node)
    doc = {"node": node, "steps": [{"action": r.action, "ok": r.ok, "error": r.error} for r in results]}
    if args.json:
        emit_json(doc)
    else:
        for r in results:
            print(f"{r.action}: {'ok' if r.ok else 'FAILED: ' + r.error}")
        if not results:
            print("nothing to do: this controller serves nothing")
    return OK if all(r.ok for r in results) else FAILED
