"""``hactl probe io``: write, read back and verify a LUN region through a userspace initiator during a failover.
``hactl probe vaai``: per LUN, what ESXi's VAAI status would say, plus ALUA and identity (hacontrol.probe.vaai).

The lead's hactl main calls :func:`add_parser` and then ``args.func(args)`` (= :func:`run`). For standalone
use and tests: ``python -m hacontrol.cli.probe io --portal ... --target ... --lun N``.

Output: the report on stdout (``--json`` for the stable JSON document), structlog JSON events on stderr
(probe.logged_in, probe.connection_lost, probe.progress ...), and on failure a last stderr line
``probe io: FAILED: <reason>``. Exit status: 0 no acknowledged write lost, 1 writes lost, 2 the probe could not
run (arguments, secret files, login rejected, LUN unusable).

The probe writes to the LUN: point it at a scratch LUN or a region nobody else uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import structlog

from hacontrol.probe.blockdev import BlockDevSession
from hacontrol.probe.io import IoParams, run_io
from hacontrol.probe.session import Credentials, Session, Target
from hacontrol.probe.stop import StopControl, stop_on_signals

DEFAULT_INITIATOR = "iqn.2024-01.org.hacontrol:probe"
DESCRIPTION = """\
Log in to the target as a userspace initiator and, for --duration seconds, write one sequence-numbered,
checksummed block every --interval-ms into a region of the LUN, reading back the previous one. On a timeout or
a lost connection, log in again (the --portal list in order, bounded retries and backoff) and reissue the I/O.
Then read the region back and check every acknowledged write.

Reports the longest I/O pause, pauses over 1 s, errors by kind with decoded sense, the connection timeline and
writes acknowledged / verified / lost. Exit 0: nothing lost; 1: acknowledged writes lost; 2: could not run.
The probe WRITES to the LUN: use a scratch LUN or a region nobody else uses.
A stop file, SIGTERM or SIGINT ends the I/O phase early; verification still runs (a second signal cuts it short).
"""
EXIT_OK, EXIT_LOST, EXIT_UNUSABLE = 0, 1, 2


class UsageError(Exception):
    pass


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``probe`` (with its ``io`` subcommand) on hactl's subparsers."""
    probe = subparsers.add_parser("probe", help="measure what an iSCSI initiator sees",
                                  description="Userspace iSCSI initiator probes (libiscsi).")
    commands = probe.add_subparsers(dest="probe_command", metavar="COMMAND", required=True)
    io = commands.add_parser("io", help="steady verified writes to a LUN region; report pauses, errors, losses",
                             description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    io.add_argument("--portal", action="append", metavar="HOST:PORT",
                    help="portal to log in to; repeat for a list tried in order after a connection loss")
    io.add_argument("--target", metavar="IQN")
    io.add_argument("--lun", type=int, metavar="N")
    io.add_argument("--device", metavar="PATH",
                    help="instead of --portal/--target/--lun: a block device of a kernel initiator (e.g. a "
                         "dm-multipath device); writes block as long as the kernel holds them")
    io.add_argument("--initiator-name", default=DEFAULT_INITIATOR, metavar="IQN")
    io.add_argument("--chap-user")
    io.add_argument("--chap-secret-file", type=Path, metavar="PATH", help="file holding the CHAP secret")
    io.add_argument("--mutual-user", help="target's CHAP user name (mutual CHAP)")
    io.add_argument("--mutual-secret-file", type=Path, metavar="PATH", help="file holding the target's secret")
    io.add_argument("--duration", type=float, default=60.0, metavar="S", help="I/O phase length (default 60)")
    io.add_argument("--interval-ms", type=float, default=10.0, metavar="MS", help="write interval (default 10)")
    io.add_argument("--region-blocks", type=int, metavar="N",
                    help="blocks in the test region (default: enough for the run without wrapping, <= 64 MiB)")
    io.add_argument("--offset-blocks", type=int, default=0, metavar="N", help="first LBA of the region")
    io.add_argument("--command-timeout", type=float, default=5.0, metavar="S", help="per-command timeout")
    io.add_argument("--login-timeout", type=float, default=5.0, metavar="S", help="per-login timeout")
    io.add_argument("--verify-timeout", type=float, default=60.0, metavar="S", help="verification budget")
    io.add_argument("--max-backoff", type=float, default=1.0, metavar="S",
                    help="longest wait between login attempts during an outage (default 1.0; lower it to "
                         "measure a failover's end precisely)")
    io.add_argument("--stop-file", type=Path, metavar="PATH",
                    help="end the I/O phase when this file appears (SIGTERM/SIGINT do the same)")
    io.add_argument("--json", action="store_true", help="print the report as JSON")
    io.set_defaults(func=run)
    _add_vaai(commands)
    probe.set_defaults(func=run)
    return probe


VAAI_DESCRIPTION = """\
Log in to the target and report, per LUN, what ESXi's `esxcli storage core device vaai status get` would show
(ATS, Clone, Zero, Delete, thin provisioning), plus ALUA support (TPGS, REPORT TARGET PORT GROUPS) and the
device identity (NAA, unit serial, relative port and port group of this path). Reads only: INQUIRY and VPD
pages, READ CAPACITY (16), REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPCODES, REPORT LUNS.
Probe through an Active/Optimized path: a Standby path refuses some of these commands (listed as errors).
Exit 0: probed; 2: could not log in or no LUN.
"""


def _add_vaai(commands: Any) -> None:
    vaai = commands.add_parser("vaai", help="report VAAI primitives, thin provisioning, ALUA and identity per LUN",
                               description=VAAI_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    vaai.add_argument("target_url", metavar="TARGET",
                      help="[iscsi://]HOST[:PORT]/IQN[/LUN], e.g. iscsi://192.0.2.11/iqn.2026-11.com.example:array1")
    vaai.add_argument("--lun", type=int, action="append", metavar="N", help="LUN to probe (repeat; default: the "
                      "one in TARGET, else every LUN REPORT LUNS lists)")
    vaai.add_argument("--initiator-name", default=DEFAULT_INITIATOR, metavar="IQN")
    vaai.add_argument("--chap-user")
    vaai.add_argument("--chap-secret-file", type=Path, metavar="PATH")
    vaai.add_argument("--mutual-user")
    vaai.add_argument("--mutual-secret-file", type=Path, metavar="PATH")
    vaai.add_argument("--login-timeout", type=float, default=5.0, metavar="S")
    vaai.add_argument("--json", action="store_true", help="print the reports as JSON")
    vaai.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.probe_command == "io":
        return run_probe_io(args)
    if args.probe_command == "vaai":
        return run_probe_vaai(args)
    print(f"probe: unknown command {args.probe_command!r}", file=sys.stderr)
    return EXIT_UNUSABLE


def run_probe_io(args: argparse.Namespace) -> int:
    try:
        params = build_params(args)
    except UsageError as exc:
        print(f"probe io: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    stop = StopControl(args.stop_file)
    factory = (lambda _t: BlockDevSession(args.device)) if args.device else Session
    with stop_on_signals(stop):
        report = run_io(params, session_factory=factory, stop=stop, log=_stderr_logger())
    print(report.to_json() if args.json else report.summary(), flush=True)
    reason = report.failure_reason()
    if reason is None:
        return EXIT_OK
    print(f"probe io: FAILED: {reason}", file=sys.stderr, flush=True)
    return EXIT_UNUSABLE if report.fatal else EXIT_LOST


def run_probe_vaai(args: argparse.Namespace) -> int:
    from hacontrol.probe import vaai
    from hacontrol.probe.session import ProbeError, Session

    try:
        portal, iqn, url_lun = parse_target_url(args.target_url)
        creds = _credentials(args)
    except UsageError as exc:
        print(f"probe vaai: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    reports = []
    try:
        luns = args.lun or ([url_lun] if url_lun is not None else [])
        if not luns:
            with Session(Target(iqn, 0, args.initiator_name, creds)) as session:
                session.connect(portal, args.login_timeout)
                res = session.execute(vaai.cdb_report_luns(), data_in_len=16384)
                luns = vaai.parse_report_luns(res.data) if res.ok else []
        for lun in luns:
            with Session(Target(iqn, lun, args.initiator_name, creds)) as session:
                session.connect(portal, args.login_timeout)
                reports.append(vaai.probe_lun(session, lun))
    except ProbeError as exc:
        print(f"probe vaai: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not reports:
        print(f"probe vaai: {iqn} at {portal} shows no LUN to this initiator", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=1))
    else:
        print(vaai.render(reports))
    return EXIT_OK


def parse_target_url(text: str) -> tuple[str, str, int | None]:
    """``[iscsi://]HOST[:PORT]/IQN[/LUN]`` -> (portal with port, IQN, LUN or None). No credentials in URLs:
    they would show in process listings; use --chap-user and --chap-secret-file."""
    rest = text.removeprefix("iscsi://")
    if "@" in rest.partition("/")[0]:
        raise UsageError("TARGET must not carry credentials; use --chap-user and --chap-secret-file")
    host, _, path = rest.partition("/")
    iqn, _, lun = path.partition("/")
    if not host or not iqn:
        raise UsageError(f"TARGET {text!r}: expected [iscsi://]HOST[:PORT]/IQN[/LUN]")
    if lun and not lun.isdigit():
        raise UsageError(f"TARGET {text!r}: the LUN must be a number")
    return normalize_portal(host), iqn, int(lun) if lun else None


def build_params(args: argparse.Namespace) -> IoParams:
    if getattr(args, "device", None):
        if args.portal or args.target:
            raise UsageError("--device replaces --portal/--target/--lun: give one or the other")
        target = Target(f"device:{args.device}", 0, args.initiator_name, None)
        portals: tuple[str, ...] = ("device",)
        args.lun = 0
    else:
        if not args.portal or not args.target or args.lun is None:
            raise UsageError("give --portal, --target and --lun (or --device for a kernel block device)")
        target = Target(args.target, args.lun, args.initiator_name, _credentials(args))
        portals = tuple(normalize_portal(p) for p in args.portal)
    params = IoParams(
        portals=portals, target=target, duration_s=args.duration,
        interval_s=args.interval_ms / 1000, region_blocks=args.region_blocks, offset_blocks=args.offset_blocks,
        command_timeout_s=args.command_timeout, login_timeout_s=args.login_timeout,
        verify_budget_s=args.verify_timeout, backoff_max_s=args.max_backoff,
        backoff_initial_s=min(0.05, args.max_backoff),
    )
    problems = params.problems()
    if args.lun < 0:
        problems.append(f"--lun must be >= 0 (got {args.lun})")
    if problems:
        raise UsageError("; ".join(problems))
    return params


def normalize_portal(portal: str) -> str:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> with the port spelled out (default 3260)."""
    if portal.startswith("["):
        host, _, rest = portal[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "3260"
        host = f"[{host}]"
    else:
        host, _, port = portal.rpartition(":") if ":" in portal else (portal, "", "3260")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--portal {portal!r}: expected HOST:PORT")
    return f"{host}:{port}"


def _credentials(args: argparse.Namespace) -> Credentials | None:
    if args.mutual_user and not args.chap_user:
        raise UsageError("--mutual-user needs --chap-user (libiscsi does mutual CHAP only on top of CHAP)")
    if bool(args.chap_user) != bool(args.chap_secret_file):
        raise UsageError("--chap-user and --chap-secret-file go together")
    if bool(args.mutual_user) != bool(args.mutual_secret_file):
        raise UsageError("--mutual-user and --mutual-secret-file go together")
    if not args.chap_user:
        return None
    mutual_secret = _read_secret(args.mutual_secret_file, "--mutual-secret-file") if args.mutual_user else None
    return Credentials(args.chap_user, _read_secret(args.chap_secret_file, "--chap-secret-file"),
                       args.mutual_user, mutual_secret)


def _read_secret(path: Path, option: str) -> str:
    # Errors name the file, never its content.
    try:
        secret = path.read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{option} {path}: cannot read ({type(exc).__name__})") from None
    if not secret:
        raise UsageError(f"{option} {path}: empty")
    return secret


def _stderr_logger() -> Any:
    # A logger of our own on stderr, whatever the process-wide structlog config is: stdout carries the report,
    # and the info events (logged_in, connection_lost, progress) are the probe's live output that labs wait on,
    # so hactl's global "warning" level must not filter them.
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hactl")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["probe", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
