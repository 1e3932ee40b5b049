"""hactl lab: the local lab (two controllers, ZooKeeper, a client) on this machine, in network namespaces.

    hactl lab demo [--json] [--keep] [--no-peer-link]   up, I/O, kill the active, failover, planned failover
                                                        back, timeline, down
    hactl lab up [--no-peer-link] | down | status
    hactl lab failover [--to NODE]
    hactl lab kill NODE | freeze NODE | thaw NODE | partition NODE | power-off NODE | start NODE | heal
    hactl lab zk-stop | zk-start         the whole ZooKeeper ensemble down (an outage), and back

Needs root (namespaces, tgtd). Every address lives inside the lab's namespaces; `down` (and Ctrl-C during
`demo`) removes every namespace, process and file the lab created.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from hacontrol.cli.common import FAILED, OK, USAGE, CliError
from hacontrol.lab.demo import Demo, run_demo
from hacontrol.lab.lab import DEFAULT_DIR, NODES, Lab, LabError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("lab", help="the local lab: two controllers, ZooKeeper and a client in namespaces",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lab-dir", default=DEFAULT_DIR, help="where the lab keeps its state (default %(default)s)")
    lsub = p.add_subparsers(dest="lab_verb", required=True)
    demo = lsub.add_parser("demo", help="the whole story, with a timeline")
    demo.add_argument("--json", action="store_true")
    demo.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    for verb in ("up", "down", "status", "heal", "zk-stop", "zk-start"):
        lsub.add_parser(verb)
    for verb in ("demo", "up"):
        lsub.choices[verb].add_argument(
            "--no-peer-link", action="store_true",
            help="no heartbeats between the agents: a dead active is detected by ZooKeeper's session expiry")
    fo = lsub.add_parser("failover", help="planned switchover inside the lab")
    fo.add_argument("--to", choices=NODES)
    for verb in ("kill", "freeze", "thaw", "partition", "power-off", "start"):
        v = lsub.add_parser(verb)
        v.add_argument("node", choices=NODES)
    for q in lsub.choices.values():
        q.add_argument("--lab-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise CliError("the lab needs root (network namespaces, tgtd)", USAGE)
    lab = Lab(Path(args.lab_dir), peer_link=not getattr(args, "no_peer_link", False))
    try:
        return _dispatch(lab, args)
    except LabError as exc:
        raise CliError(str(exc), FAILED) from exc
    except KeyboardInterrupt:
        print("interrupted: tearing the lab down", file=sys.stderr)
        lab.down()
        raise


def _dispatch(lab: Lab, args: argparse.Namespace) -> int:
    verb = args.lab_verb
    if verb == "demo":
        return run_demo(lab, keep=args.keep, as_json=args.json)
    if verb == "up":
        with lab.lock():
            state = lab.up()
        print(f"lab up: VIP {state['vip']}, config {lab.config_file}; try `hactl lab status`")
        return OK
    if verb == "down":
        with lab.lock():
            for line in lab.down():
                print(line)
        return OK
    if not lab.is_up():
        raise LabError("the lab is not up: run `hactl lab up` (or `hactl lab demo`)")
    demo = Demo(lab, print)
    if verb == "status":
        out = demo.hactl("status")
        print(out.stdout or out.stderr, end="")
        return out.returncode
    if verb == "failover":
        out = demo.hactl("failover", *(["--to", args.to] if args.to else []))
        print(out.stdout or out.stderr, end="")
        return out.returncode
    action = {"kill": lab.kill, "freeze": lab.freeze, "thaw": lambda n: lab.freeze(n, frozen=False),
              "partition": lab.partition, "power-off": lab.power_off, "start": lab.start_node}.get(verb)
    if action is not None:
        action(args.node)
    elif verb == "heal":
        lab.heal()
    elif verb in ("zk-stop", "zk-start"):
        (lab.zk_stop if verb == "zk-stop" else lab.zk_start)()
    print(json.dumps({"done": verb, "node": getattr(args, "node", None)}))
    return OK


__all__ = ["add_parser"]
