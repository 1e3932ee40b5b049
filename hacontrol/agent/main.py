"""``hacontrol``: the agent, one per controller (a systemd service).

    hacontrol [--config /etc/hacontrol/hacontrol.toml] [--node NAME]

The controller's name comes from --node, then $HACONTROL_NODE, then the host
name. SIGTERM (systemctl stop) hands the active role over before exiting;
SIGINT does the same. ``--doubles DIR`` replaces the target, the network, the
disks and the watchdog with the recording doubles of hacontrol.agent.doubles
(integration tests only).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import structlog

from hacontrol import logs
from hacontrol.adapters.zookeeper import Coordinator, Session
from hacontrol.agent import guardian
from hacontrol.agent.build import Controller, build_controller, serve_reservation_files
from hacontrol.agent.execute import StepResult
from hacontrol.config import DEFAULT_PATH, Config, ConfigError, backend, load
from hacontrol.core.decide import awaits_hand_over, shutdown_again, shutdown_plan
from hacontrol.core.model import Observation, SessionState
from hacontrol.core.peer import stepped_down

log = structlog.get_logger("hacontrol.agent")

EXIT_CONFIG = 2
EXIT_NODE = 3


def resolve_node(cfg_names: tuple[str, ...], flag: str | None) -> str:
    candidates = [flag, os.environ.get("HACONTROL_NODE"), socket.gethostname().split(".")[0]]
    for name in candidates:
        if name:
            if name in cfg_names:
                return name
            if name is flag or name == os.environ.get("HACONTROL_NODE"):
                raise LookupError(f"controller {name!r} is not in the configuration (nodes: {', '.join(cfg_names)})")
    raise LookupError(f"this host is none of {', '.join(cfg_names)}: pass --node or set HACONTROL_NODE")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hacontrol", description="hacontrol agent (one per controller)")
    p.add_argument("--config", default=os.environ.get("HACONTROL_CONFIG", DEFAULT_PATH))
    p.add_argument("--node", help="this controller's name in the configuration")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--doubles", metavar="DIR", help="use recording doubles in DIR instead of hardware (tests)")
    p.add_argument("--zk-hosts", help="override zookeeper.hosts (tests, lab)")
    p.add_argument("--metrics-listen", default=None,
                   help="override metrics.listen (host:port); an empty string turns the endpoint off")
    p.add_argument("--handover-wait-s", type=float, default=10.0,
                   help="on stop, how long to wait for the peer to take over before closing the session")
    p.add_argument("--no-guardian", action="store_true",
                   help="do not fork the guardian that steps this controller down when the agent dies "
                        "(hacontrol.agent.guardian); the lab and the integration tests model a dead controller")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        cfg = load(args.config)
        refused = backend.backend_problems(cfg)
        if refused:
            raise ConfigError(refused, args.config)
    except ConfigError as exc:
        print(f"hacontrol: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        node = resolve_node(cfg.node_names, args.node)
    except LookupError as exc:
        print(f"hacontrol: {exc}", file=sys.stderr)
        return EXIT_NODE
    structlog.contextvars.bind_contextvars(node=node, cluster=cfg.cluster_name)
    for w in backend.all_warnings(cfg):  # what `hactl config check` warns about, in the agent's own journal
        log.warning("config_warning", detail=str(w))
    if not args.no_guardian:  # forked before anything is built or any thread runs
        guardian.start(lambda: _guardian_step_down(args.config, cfg, node, args.doubles))
    ctl = build_controller(cfg, node, doubles=args.doubles, zk_hosts=args.zk_hosts, config_path=Path(args.config),
                           config_text=Path(args.config).read_text())
    if args.doubles:
        Path(args.doubles, f"{node}.pid").write_text(str(os.getpid()))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal", signal=signal.Signals(signum).name)
        stop.set()
        ctl.agent.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    listen = cfg.metrics_listen if args.metrics_listen is None else args.metrics_listen
    if listen and not (args.doubles and args.metrics_listen is None):
        try:
            ctl.metrics.serve(listen)
        except OSError as exc:  # metrics are for operators; a busy port must not stop failover
            log.error("metrics_not_served", listen=listen, error=str(exc))
    store = serve_reservation_files(cfg, ctl)  # after the guardian's fork: it must not hold /dev/fuse
    try:
        return run(ctl, stop, args.handover_wait_s)
    finally:
        if store is not None:
            store.stop()


def run(ctl: Controller, stop: threading.Event, handover_wait_s: float) -> int:
    ctl.session.start_async()
    if ctl.link is not None:
        ctl.link.start()
    # READY=1 follows the first decision (build.ready_once): until then systemd shows the unit "activating"
    ctl.notifier.notify("STATUS=starting: connecting to ZooKeeper")
    log.info("agent_started", timing=ctl.timing.__dict__, backend=ctl.backend)
    try:
        ctl.agent.run(stop)
    finally:
        _shutdown(ctl, handover_wait_s)
    return 0


SHUTDOWN_STEPS_S = 5.0  # observe + step-down steps before the wait for the peer, on a loaded controller
LAST_WORDS_HEARTBEATS = 3  # heartbeats sent with the stepped-down advert before the session closes
RECONNECT_WAIT_S = 3.0  # how long a stop waits for a suspended ZooKeeper session, to release the lead in order


def _shutdown(ctl: Controller, wait_s: float) -> None:
    """Step down, tell the peer (link and ZooKeeper) that we serve nothing, hand over if we lead, wait (bounded)
    until the peer leads, then close the session.

    A session that is suspended when the stop begins (a loaded controller) is waited for, briefly, after the
    data path is down: without the report and the release the peer learns of the stop only from the session's
    end, and it would power off a controller that is merely stopping. The peer link says it at once."""
    ctl.notifier.stopping(takes_s=wait_s + SHUTDOWN_STEPS_S + RECONNECT_WAIT_S)
    try:
        before = _observe(ctl)
        _step_down(ctl, before, "shutdown")
        after = _observe(ctl)
        said = stepped_down(after) if ctl.link is not None else None
        if said is not None:
            ctl.link.advertise(said)
        deadline = time.monotonic() + RECONNECT_WAIT_S
        while before.coord.session is SessionState.SUSPENDED and time.monotonic() < deadline:
            if shutdown_again(before, after):
                _step_down(ctl, after, "shutdown_after_reconnect")
                break
            time.sleep(0.1)
            after = _observe(ctl)
        if awaits_hand_over(before, after):
            _wait_for_peer(ctl.coordinator, ctl.peer, wait_s)
        elif said is not None:
            time.sleep(LAST_WORDS_HEARTBEATS * ctl.link.interval_s)  # the peer hears "stepped down" first
    finally:
        ctl.session.stop()
        if ctl.link is not None:
            ctl.link.stop()
        log.info("agent_stopped")


def _observe(ctl: Controller) -> Observation:
    return ctl.agent.observer.observe(time.monotonic() + 1.0)


def _step_down(ctl: Controller, obs: Observation, event: str) -> None:
    results = ctl.agent.executor.run(shutdown_plan(obs))
    log.info(event, actions=[f"{r.action}:{'ok' if r.ok else 'FAILED'}" for r in results],
             session=obs.coord.session.value)


def step_down_here(cfg: Config, node: str, doubles: str | None = None) -> tuple[StepResult, ...]:
    """Stop serving on this controller now, without ZooKeeper (the guardian, and ExecStopPost through
    ``hactl local step-down``): the adapters are built but no session is started."""
    ctl = build_controller(cfg, node, doubles=doubles)
    obs = ctl.agent.observer.observe(time.monotonic() + 2.0)
    results = ctl.agent.executor.run(shutdown_plan(obs))
    log.info("step_down", actions=[f"{r.action}:{'ok' if r.ok else 'FAILED: ' + r.error}" for r in results])
    return results


def _guardian_step_down(path: str, started_with: Config, node: str, doubles: str | None) -> bool:
    """The guardian's step-down, with the configuration file as it is now (the config sync may have adopted a
    newer one, with other addresses, since the agent started), or the one the agent started with."""
    try:
        cfg = load(path)
    except ConfigError as exc:
        log.warning("guardian_config_unreadable", error=str(exc), detail="stepping down with the start's config")
        cfg = started_with
    return all(r.ok for r in step_down_here(cfg, node, doubles=doubles))


def _wait_for_peer(coordinator: Coordinator, peer: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        view = coordinator.observe(time.monotonic() + 0.5)
        if view.leader is not None and view.leader.node == peer:
            log.info("handed_over", to=peer)
            return
        time.sleep(0.05)
    log.warning("handover_timeout", peer=peer, waited_s=wait_s)


__all__ = ["Session", "main", "resolve_node"]

if __name__ == "__main__":
    sys.exit(main())
