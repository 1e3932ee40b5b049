"""hactl config check: validate a configuration file and list every problem at once."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hacontrol.cli.common import OK, USAGE, emit_json
from hacontrol.config import ConfigError, load
from hacontrol.config.semantics import warnings

CHECK_HELP = """Validate a configuration file without touching anything: syntax, every key and value, names
(IQN/EUI/NAA), CHAP secrets, LUN identities, addresses against interface networks, and timing safety.
All problems are listed at once, each with the key, the value and how to fix it; secrets print as ***.

Exit status: 0 when the file is valid (warnings may be printed), 2 when it is not."""


def add_parser(sub: Any) -> None:
    c = sub.add_parser("config", help="check the configuration")
    csub = c.add_subparsers(dest="config_verb", required=True)
    p = csub.add_parser("check", help="validate a configuration file", description=CHECK_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", default=None, help="the file (default: --config or the default path)")
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    from hacontrol.config import DEFAULT_PATH

    path = args.file or args.config or DEFAULT_PATH
    try:
        cfg = load(path)
        backend_problems = _backend_problems(cfg)
        if backend_problems:
            raise ConfigError(backend_problems, path)
    except ConfigError as exc:
        if args.json:
            emit_json({"valid": False, "file": path, "problems": [_problem(p) for p in exc.problems]})
        else:
            print(f"{path}: INVALID", file=sys.stderr)
            print(str(exc), file=sys.stderr)
        return USAGE
    warns = warnings(cfg) + _backend_warnings(cfg)
    if args.json:
        emit_json({"valid": True, "file": path, "warnings": [_problem(p) for p in warns],
                   "cluster": cfg.cluster_name, "nodes": list(cfg.node_names),
                   "luns": sum(len(t.luns) for t in cfg.targets)})
    else:
        print(f"{path}: valid (cluster {cfg.cluster_name}, controllers {', '.join(cfg.node_names)}, "
              f"{sum(len(t.luns) for t in cfg.targets)} LUNs)")
        for w in warns:
            print(f"  warning: {w}")
    return OK


def _backend_problems(cfg: Any) -> list[Any]:
    """What the configured backend cannot do, found without touching it (tgt: LUN 0, LUN masking, ...)."""
    if cfg.backend == "tgt":
        from hacontrol.adapters.tgt import desired

        return desired.problems(cfg, None)
    return []


def _backend_warnings(cfg: Any) -> list[Any]:
    if cfg.backend == "tgt":
        from hacontrol.adapters.tgt import desired

        return desired.warnings(cfg)
    return []


def _problem(p: Any) -> dict[str, Any]:
    return {"key": p.key, "value": p.value if not isinstance(p.value, bytes) else "***", "message": p.message,
            "fix": p.fix}
