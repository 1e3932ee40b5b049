"""What every hactl verb shares: exit codes, config and ZooKeeper access, output as tables or JSON."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hacontrol.adapters.zookeeper.admin import Admin
from hacontrol.adapters.zookeeper.session import Session, ZooKeeperUnavailable
from hacontrol.config import DEFAULT_PATH, Config, ConfigError, load

# Exit codes: distinct per failure class so scripts can branch on them.
OK = 0
FAILED = 1  # the operation ran and did not succeed (e.g. writes lost, check failed)
USAGE = 2  # bad arguments or a configuration error
ZK_UNREACHABLE = 3
UNKNOWN_NODE = 4
REFUSED = 5  # the cluster refused (switchover refused, maintenance, ...)
TIMEOUT = 6


class CliError(Exception):
    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get("HACONTROL_CONFIG", DEFAULT_PATH),
                   help="configuration file (default: %(default)s)")
    p.add_argument("--zk-hosts", default=os.environ.get("HACONTROL_ZK_HOSTS"),
                   help="override zookeeper.hosts, e.g. 127.0.0.1:2181,127.0.0.1:2182")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def load_config(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        raise CliError(str(exc), USAGE) from exc


@contextmanager
def admin(args: argparse.Namespace, cfg: Config | None = None) -> Iterator[tuple[Admin, Config]]:
    cfg = cfg or load_config(args.config)
    session = Session(cfg.zookeeper, cfg.timing.session_timeout_s, hosts=args.zk_hosts)
    try:
        session.start(timeout_s=float(os.environ.get("HACONTROL_ZK_CONNECT_S", "5")))
    except ZooKeeperUnavailable as exc:
        raise CliError(str(exc), ZK_UNREACHABLE) from exc
    try:
        yield Admin(session), cfg
    finally:
        session.stop()


def who() -> str:
    try:
        user = getpass.getuser()
    except OSError:
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c in (None, "") else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"
