"""hactl config check: validate a configuration file and list every problem at once."""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from hacontrol.adapters.zookeeper.admin import IntentRefused
from hacontrol.cli.common import OK, REFUSED, TIMEOUT, USAGE, CliError, admin, emit_json, who
from hacontrol.config import DEFAULT_PATH, ConfigError, backend, load, loads

DIFF_HELP = """Show what applying FILE would change in the configuration distributed through ZooKeeper.

Secrets are masked; a changed secret shows as a different *** token. Exit 0 (no change or a diff shown),
2 when FILE is invalid, 3 when ZooKeeper is unreachable."""

APPLY_HELP = """Validate FILE, show the diff, and distribute it to both controllers through ZooKeeper.

Each agent validates it again, writes it over its own file (keeping .prev) and applies the target part
(targets, LUNs, ACLs, CHAP) at once; other changes take effect when the agent restarts, and `hactl status`
says so. A file that fails validation is refused whole and nothing is written. Exit 0 once both controllers
run it, 2 invalid, 3 ZooKeeper unreachable, 5 refused (changed meanwhile, or declined), 6 not converged in time."""

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
    for verb, func, text in (("diff", diff, DIFF_HELP), ("apply", apply, APPLY_HELP)):
        q = csub.add_parser(verb, help=text.splitlines()[0], description=text,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("file", help="the new configuration")
        q.add_argument("--config", default=os.environ.get("HACONTROL_CONFIG", DEFAULT_PATH),
                       help="configuration used to reach ZooKeeper (default: %(default)s)")
        q.add_argument("--zk-hosts", default=os.environ.get("HACONTROL_ZK_HOSTS"))
        q.add_argument("--json", action="store_true")
        if verb == "apply":
            q.add_argument("--yes", action="store_true", help="do not ask (required when not on a terminal)")
            q.add_argument("--wait", type=float, default=30.0, help="seconds to wait for both controllers")
        q.set_defaults(func=func)


def check(args: argparse.Namespace) -> int:
    path = args.file or args.config or DEFAULT_PATH
    try:
        cfg = load(path)
        backend_problems = backend.backend_problems(cfg)
        if backend_problems:
            raise ConfigError(backend_problems, path)
    except ConfigError as exc:
        if args.json:
            emit_json({"valid": False, "file": path, "problems": [_problem(p) for p in exc.problems]})
        else:
            print(f"{path}: INVALID", file=sys.stderr)
            print(str(exc), file=sys.stderr)
        return USAGE
    warns = backend.all_warnings(cfg)
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


_SECRET_LINE = re.compile(r'^(\s*(?:secret|mutual_secret|password)\s*=\s*)"([^"]*)"', re.MULTILINE)


def masked(texts: list[str]) -> list[str]:
    """Replace every secret value by a token; equal secrets get equal tokens, so a changed one shows."""
    tokens: dict[str, str] = {}

    def token(m: re.Match) -> str:
        value = m.group(2)
        tokens.setdefault(value, f"***{len(tokens) + 1}")
        return f'{m.group(1)}"{tokens[value]}"'

    return [_SECRET_LINE.sub(token, t) for t in texts]


def _validated(path: str) -> tuple[Any, str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CliError(f"{path}: cannot be read ({exc.strerror})", USAGE) from exc
    try:
        cfg = loads(text, source=path)
        problems = backend.backend_problems(cfg)
        if problems:
            raise ConfigError(problems, path)
    except ConfigError as exc:
        raise CliError(f"{path}: INVALID, nothing was applied\n{exc}", USAGE) from exc
    return cfg, text


def _diff_lines(current: str, new: str) -> list[str]:
    old_m, new_m = masked([current, new])
    return list(difflib.unified_diff(old_m.splitlines(), new_m.splitlines(), "distributed", "new", lineterm=""))


def diff(args: argparse.Namespace) -> int:
    _cfg, text = _validated(args.file)
    with admin(args) as (adm, _):
        doc, _version = adm.config()
    lines = _diff_lines(str(doc.get("text", "")) if doc else "", text)
    if args.json:
        emit_json({"changed": bool(lines), "diff": lines})
    else:
        print("\n".join(lines) if lines else "no change")
    return OK


def apply(args: argparse.Namespace) -> int:
    cfg, text = _validated(args.file)
    digest = hashlib.sha256(text.encode()).hexdigest()
    with admin(args) as (adm, _):
        doc, version = adm.config()
        lines = _diff_lines(str(doc.get("text", "")) if doc else "", text)
        if not lines:
            print("no change: both controllers already have this configuration" if not args.json else "")
            return OK
        if not args.json:
            print("\n".join(lines))
        if not args.yes:
            if not sys.stdin.isatty():
                raise CliError("not on a terminal: pass --yes to apply", USAGE)
            if input("apply this configuration to both controllers? [y/N] ").strip().lower() != "y":
                raise CliError("not applied", REFUSED)
        try:
            new_version = adm.put_config(text, digest, version, who())
        except IntentRefused as exc:
            raise CliError(str(exc), REFUSED) from exc
        return _await_convergence(args, adm, cfg, digest, new_version)


def _await_convergence(args: argparse.Namespace, adm: Any, cfg: Any, digest: str, version: int) -> int:
    deadline = time.monotonic() + args.wait
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        members = adm.view().members
        state = {n: {"sha256_ok": m.doc.get("config_sha256") == digest if (m := members.get(n)) else False,
                     "restart_pending": bool(m and m.doc.get("config_restart_pending")),
                     "error": (m.doc.get("config_error") if m else "no live session") or ""}
                 for n in cfg.node_names}
        if all(s["sha256_ok"] for s in state.values()):
            out = {"applied": True, "version": version, "sha256": digest, "nodes": state}
            if args.json:
                emit_json(out)
            else:
                pending = [n for n, s in state.items() if s["restart_pending"]]
                print(f"applied on {', '.join(cfg.node_names)}" + (
                    f"; restart needed on {', '.join(pending)} for the non-target changes" if pending else ""))
            return OK
        if any(s["error"] and s["error"] != "no live session" for s in state.values()):
            break
        time.sleep(0.1)
    behind = {n: s["error"] or "has not adopted it yet" for n, s in state.items() if not s["sha256_ok"]}
    raise CliError(f"distributed, but not adopted everywhere: {behind}", TIMEOUT)


def _problem(p: Any) -> dict[str, Any]:
    return {"key": p.key, "value": p.value if not isinstance(p.value, bytes) else "***", "message": p.message,
            "fix": p.fix}
