"""hactl: the operator's command line for hacontrol.

    hactl status | failover [--to NODE] | maintenance on|off|show | history
    hactl config check [FILE]
    hactl simulate SCENARIO
    hactl local step-down         (this controller only, no ZooKeeper: systemd's ExecStopPost)
    hactl probe io ...            (userspace iSCSI initiator: what does an initiator see?)
    hactl lab up|down|status|demo (the local lab)

Every verb takes --json. Exit codes: 0 ok, 1 failed, 2 usage/config error, 3 ZooKeeper unreachable,
4 unknown node, 5 refused by the cluster, 6 timeout.
"""

from __future__ import annotations

import argparse
import sys

from hacontrol import __version__, logs
from hacontrol.cli import completion, config_cmd, local, operate, simulate, status
from hacontrol.cli.common import USAGE, CliError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hactl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"hactl {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    status.add_parser(sub)
    operate.add_parsers(sub)
    config_cmd.add_parser(sub)
    simulate.add_parser(sub)
    local.add_parser(sub)
    completion.add_parser(sub)
    _optional(sub, "hacontrol.cli.probe")
    _optional(sub, "hacontrol.cli.lab")
    return p


def _optional(sub: argparse._SubParsersAction, module: str) -> None:
    """Verbs whose dependencies (libiscsi, namespaces) only some machines have."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    mod.add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure("console" if sys.stderr.isatty() else "json", "warning")
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"hactl: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return USAGE


if __name__ == "__main__":
    sys.exit(main())
