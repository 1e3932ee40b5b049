"""Build one controller's agent from the configuration: real adapters, or the recording doubles."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from kazoo.exceptions import KazooException

from hacontrol.adapters.fencing import Fencing
from hacontrol.adapters.fencing.command import CommandFencer
from hacontrol.adapters.metrics import Metrics
from hacontrol.adapters.peerlink import LinkState, PeerLink
from hacontrol.adapters.peerlink import Path as LinkPath
from hacontrol.adapters.watchdog import DeviceWatchdog, NullWatchdog, SystemdNotifier, device_timeout_s
from hacontrol.adapters.zookeeper import Coordinator, Session
from hacontrol.agent import doubles
from hacontrol.agent.configsync import ConfigSync, sha256
from hacontrol.agent.connections import ConnectionWatch, tickle_peer
from hacontrol.agent.execute import Executor
from hacontrol.agent.localstatus import LocalStatus
from hacontrol.agent.loop import ROUTINE_ACTIONS, Agent, TickReport
from hacontrol.agent.observe import Observer
from hacontrol.agent.protocols import AdapterError, ManagedAddress
from hacontrol.agent.timeline import Timeline
from hacontrol.config.schema import Config
from hacontrol.core.decide import Plan, link_advert
from hacontrol.core.model import Observation, Role, Spec
from hacontrol.core.timing import Timing

log = structlog.get_logger("hacontrol.agent")


@dataclass
class Controller:
    node: str
    peer: str
    backend: str
    timing: Timing
    session: Session
    coordinator: Coordinator
    agent: Agent
    notifier: SystemdNotifier
    metrics: Metrics
    extras: dict[str, Any]
    link: PeerLink | None = None


def managed_vips(cfg: Config, node: str) -> tuple[ManagedAddress, ...]:
    return tuple(ManagedAddress(v.address, v.interface_for(node)) for v in cfg.vips)


def build_controller(cfg: Config, node: str, *, doubles: str | None = None, zk_hosts: str | None = None,
                     config_path: Path | None = None, config_text: str = "") -> Controller:
    peer = cfg.peer_of(node).name
    wake = threading.Event()
    session = Session(cfg.zookeeper, cfg.timing.session_timeout_s, wake=wake, hosts=zk_hosts)
    coordinator = Coordinator(session, node, peer)
    if cfg.peer_link is not None and cfg.peer_link.fast_takeover:  # the peer reads it before taking over fast
        coordinator.touch_every_s = cfg.timing.peer_dead_after_s / 3
    vips = managed_vips(cfg, node)
    parts = _doubles(cfg, node, doubles) if doubles else _real(cfg, node)
    fencing: Fencing = parts["fencing"]
    link = peer_link(cfg, node)
    spec = Spec(node=node, peer=peer, vips=frozenset(v.key for v in vips), alua=parts["alua"],
                fencing_configured=fencing.configured,
                power_fencing=bool(fencing.power), port_takeover=cfg.port_takeover and parts["ports"] is not None,
                own_portals=bool(cfg.node(node).portals) and parts["ports"] is not None,
                standby_registers=cfg.fencing.standby_registers, on_key_lost=cfg.fencing.on_key_lost,
                announce_every_s=cfg.network.garp_refresh_s,
                fast_takeover=link is not None and cfg.peer_link.fast_takeover and bool(fencing.power),
                failsafe=link is not None and cfg.peer_link.failsafe)
    observer = Observer(spec, coordinator, parts["target"], parts["network"], fencing, parts["watchdog"], vips,
                        link=link)
    notifier = SystemdNotifier()
    metrics = Metrics(node)
    timeline = Timeline(node, peer, record=lambda doc: (metrics.on_record(doc), _record(coordinator, doc)))
    executor = Executor(cfg.timing, coordinator, parts["target"], parts["network"], fencing, parts["watchdog"],
                        {v.key: v for v in vips}, ports=parts["ports"], rebooter=parts.get("rebooter"),
                        promises=link, fence_budget_s=_fence_budget(cfg, peer), ports_budget_s=_ports_budget(cfg))
    observer.announced_at = lambda: executor.announced_at
    sync = ConfigSync(config_path, cfg, coordinator, parts["target"], sha=sha256(config_text) if config_text else "")
    agent = Agent(cfg.timing, observer, executor, timeline=timeline, wake=wake, config_sync=sync)
    executor.on_published = sync.published
    local = LocalStatus(cfg.runtime_dir, node, link.report if link is not None else None)
    agent.on_tick = lambda report: (metrics.on_tick(report), _notify(notifier, report), local.on_tick(report))
    _wire_link_report(agent, link, sync, cfg.timing)
    agent.on_plan = _on_plan(ready_once(notifier, 2 * cfg.timing.session_timeout_s), link, cfg.timing)
    executor.heartbeat = notifier.kick
    watch = None if doubles else _wire_connections(cfg, node, parts, agent=agent, executor=executor,
                                                       coordinator=coordinator, sync=sync)
    executor.publish_extra = lambda: {**_publish_extra(agent), **sync.report(), **_target_extra(parts["target"]),
                                      **(watch.report() if watch is not None else {}),
                                      **({"peer_link": link.report()} if link is not None else {})}
    _wire_capacity(parts["target"], metrics, sync)
    return Controller(node, peer, "doubles" if doubles else cfg.backend, cfg.timing, session, coordinator, agent,
                      notifier, metrics, parts, link)


def peer_link(cfg: Config, node: str) -> PeerLink | None:
    """The link to the peer, if [peer_link] is configured (not started: hacontrol.agent.main starts it)."""
    if cfg.peer_link is None:
        return None
    me, other = cfg.node(node), cfg.peer_of(node)
    paths = [LinkPath(local, remote, cfg.peer_link.port)
             for local, remote in zip(me.peer_link, other.peer_link, strict=True)]
    s = cfg.timing.session_timeout_s
    state = LinkState(me.id, other.id, len(paths), cfg.peer_link.key.reveal().encode(), time.time_ns(),
                      promise_s=s, min_promise_s=s, stale_incarnation_s=max(2.0, 10 * cfg.timing.peer_dead_after_s))
    return PeerLink(paths, state, cfg.timing.heartbeat_interval_s)


def _wire_link_report(agent: Agent, link: PeerLink | None, sync: ConfigSync, timing: Timing) -> None:
    """Publish our member report again when what the link hears changes (paths alive, promises), so hactl
    status shows it without waiting for the next change of role."""
    if link is None:
        return
    on_tick = agent.on_tick
    last: list[Any] = [None]

    def tick(report: TickReport) -> None:
        view, now = report.observation.link, time.monotonic()
        summary = (tuple(t is not None and now - t < timing.peer_dead_after_s for t in view.heard),
                   view.promised_until is not None and now < view.promised_until, report.plan.reason)
        if summary != last[0]:
            last[0] = summary
            sync.dirty = True
        if on_tick is not None:
            on_tick(report)

    agent.on_tick = tick


def _on_plan(ready: Callable[[Observation, Plan], None], link: PeerLink | None, timing: Timing
             ) -> Callable[[Observation, Plan], None]:
    """Before a plan runs: READY=1 once, and what the peer link tells the peer from now on (a plan that claims
    or fences stops our promises before it starts)."""
    def on_plan(obs: Observation, plan: Plan) -> None:
        ready(obs, plan)
        if link is not None:
            link.advertise(link_advert(obs, plan, time.monotonic(), timing))

    return on_plan


def _fence_budget(cfg: Config, peer: str) -> float:
    methods = cfg.node(peer).fencing
    return max(1.0, sum(m.timeout_s for m in methods)) if methods else 5.0


def _ports_budget(cfg: Config) -> float:
    """Moving a port: ALUA and TPG (one operation), the duplicate-address check, the announcements, the tickles."""
    n = cfg.network
    return cfg.timing.operation_timeout_s + n.dad_timeout_s + n.garp_count * n.garp_interval_s + 0.5


def _record(coordinator: Coordinator, doc: dict[str, Any]) -> None:
    """History is best effort: the event is logged either way, and a ZooKeeper hiccup must not stop the loop."""
    log.info("history", **doc)
    try:
        coordinator.record_history(doc, time.monotonic() + 1.0)
    except (AdapterError, KazooException) as exc:
        log.warning("history_not_recorded", error=str(exc))


def _publish_extra(agent: Agent) -> dict[str, Any]:
    last = agent.last
    if last is None:
        return {}
    return {
        "storage_visible": last.observation.storage.visible,
        "fence": None if last.observation.storage.last_fence is None else last.observation.storage.last_fence.detail,
        "pid": os.getpid(),
        # why the last tick's plan stopped (e.g. the target configuration LIO refuses), for hactl status
        "last_error": next((f"{r.action}: {r.error}" for r in last.results if not r.ok), "")[:2000],
    }


def _wire_connections(cfg: Config, node: str, parts: dict[str, Any], *, agent: Agent, executor: Executor,
                      coordinator: Coordinator, sync: ConfigSync) -> ConnectionWatch | None:
    """Port takeover: publish our iSCSI connections; after adopting the peer's port, tickle the peer's."""
    if not (cfg.port_takeover and parts["ports"] is not None):
        return None
    addresses = [str(p.address.ip) for p in cfg.node(node).portals]
    watch = ConnectionWatch(None, addresses, sorted({t.port for t in cfg.targets}) or [3260])
    on_tick = agent.on_tick

    def tick(report: TickReport) -> None:
        if watch.poll():
            sync.dirty = True  # our report changed outside the core's view: publish it again
        if on_tick is not None:
            on_tick(report)

    agent.on_tick = tick
    executor.after_adopt = lambda: tickle_peer(None, coordinator.peer_connections)
    return watch


def _target_extra(target: Any) -> dict[str, Any]:
    """The backing stores' fill level and the LUNs that carry initiators' persistent reservations, for the
    member report (``hactl status``); LIO only."""
    out = {}
    for key, name in (("capacity", "capacity_report"), ("reservations", "reservations_report"),
                      ("reservations_sync", "reservations_sync_report")):
        report = getattr(target, name, None)
        if report is not None:
            out[key] = report()
    return out


def _wire_capacity(target: Any, metrics: Metrics, sync: ConfigSync) -> None:
    """Capacity readings feed the metrics; a threshold crossing, or a change in the LUNs' reservations,
    republishes the member report at once (the config sync's dirty flag is the agent's existing "publish
    again" switch)."""
    if not hasattr(target, "on_capacity"):
        return
    target.on_capacity = lambda r: metrics.on_capacity(r.lun, r.used_ratio, r.threshold_ratio)
    target.on_capacity_crossing = lambda: setattr(sync, "dirty", True)
    target.on_reservations_changed = lambda: setattr(sync, "dirty", True)


def ready_once(notifier: SystemdNotifier, starting_bound_s: float,
               clock: Callable[[], float] = time.monotonic) -> Callable[[Observation, Plan], None]:
    """systemd's READY=1 once the agent has a ZooKeeper session and has decided its role (Agent.on_plan): from
    then on it stands by or serves. Without a session after ``starting_bound_s`` it is READY all the same (it
    serves nothing and claims nothing: standing by), so an unreachable ensemble does not become a restart loop.
    The first plan's own work (building the target, seconds with hundreds of LUNs; a takeover) runs after
    READY, and STATUS says what it is."""
    sent = False
    first = clock()

    def on_plan(_obs: Observation, plan: Plan) -> None:
        nonlocal sent
        if sent or (plan.role is Role.STARTING and clock() - first < starting_bound_s):
            return
        sent = True
        doing = [type(a).__name__ for a in plan.actions if type(a).__name__ not in ROUTINE_ACTIONS]
        notifier.ready(f"{plan.role.value}: {plan.reason.value}" + (f" ({', '.join(doing)})" if doing else ""))

    return on_plan


def _notify(notifier: SystemdNotifier, report: TickReport) -> None:
    notifier.alive(f"{report.plan.role.value}: {report.plan.reason.value}")


def _doubles(cfg: Config, node: str, directory: str) -> dict[str, Any]:
    state = doubles.SharedState(Path(directory), node)
    ids = {n.name: n.id for n in cfg.nodes}
    peer_methods = cfg.node(cfg.peer_of(node).name).fencing
    disk = doubles.SharedDisk(state, ids) if any(m.method == "scsi_pr" for m in peer_methods) else None
    power = [doubles.PowerDouble(state)] if any(m.powers_off for m in peer_methods) else []
    return {
        "target": doubles.RecordingTarget(state),
        "network": doubles.RecordingNetwork(state),
        "fencing": Fencing(cfg.peer_of(node).name, disk, power, cfg.fencing.policy),
        "watchdog": doubles.RecordingWatchdog(state),
        "alua": True,
        "ports": None,
    }


def _real(cfg: Config, node: str) -> dict[str, Any]:
    from hacontrol.adapters.network import Network  # imported here: pyroute2 is only needed on a controller

    network = Network(netns=None, garp_count=cfg.network.garp_count, garp_interval_s=cfg.network.garp_interval_s,
                      dad_timeout_s=cfg.network.dad_timeout_s,
                      iscsi_ports=tuple(sorted({t.port for t in cfg.targets})) or (3260,))
    target, alua, ports = _target(cfg, node, network)
    return {
        "target": target,
        "network": network,
        "fencing": _fencing(cfg, node),
        "watchdog": _watchdog(cfg),
        "alua": alua,
        "ports": ports,
    }


def _target(cfg: Config, node: str, network: Any = None) -> tuple[Any, bool, Any]:
    if cfg.backend == "tgt":
        from hacontrol.adapters.tgt import TgtTarget

        control_port = int(os.environ.get("HACONTROL_TGT_CONTROL_PORT", "0")) or None
        return TgtTarget(control_port=control_port).port(cfg, node), False, None
    from hacontrol.adapters.lio import LioPort

    # The network adapter adds and removes the portal addresses when a port moves (port takeover).
    port = LioPort(cfg, node, network=network,
                   pr_state_file=Path(cfg.runtime_dir) / f"{node}.reservations-loaded-epoch")
    # The port mover also brings this controller's managed portal addresses up when takeover is off.
    return port, True, (port if cfg.port_takeover or cfg.node(node).portals else None)


# How long a PR-OUT may wait for ZooKeeper before it fails (not acknowledged): a ZooKeeper write takes
# milliseconds; the bound is kept short because a tick that waits for the target's in-flight commands (a port
# disabled, a LUN unexported) waits for this too, and the watchdog does not.
PR_SYNC_BUDGET_S = 1.0


def serve_reservation_files(cfg: Config, ctl: Controller) -> Any:
    """The agent (not ``hactl local``) serves LIO's APTPL directory, so that on the active a PR-OUT completes
    only once ZooKeeper holds it (adapters/lio/prstore.py). Without FUSE the reservations are still carried,
    read every tick, with the window that leaves (docs/vmware.md); the journal and ``hactl status`` say so."""
    target = ctl.extras["target"]
    if not hasattr(target, "serve_reservation_files"):
        return None
    from hacontrol.adapters.lio.prstore import StoreError

    budget = min(PR_SYNC_BUDGET_S, cfg.timing.session_timeout_s / 4)
    try:
        return target.serve_reservation_files(ctl.coordinator.publish_reservations, budget,
                                              Path(cfg.runtime_dir) / f"{ctl.node}.pr")
    except (StoreError, OSError) as exc:
        log.error("lio_pr_store_unavailable", error=str(exc),
                  detail="reservations are read every tick instead: a PR-OUT may be acknowledged before it is in "
                         "ZooKeeper")
        return None


def _fencing(cfg: Config, node: str) -> Fencing:
    peer = cfg.peer_of(node)
    reservations = None
    power: list[Any] = []
    for m in peer.fencing:
        if m.method == "scsi_pr":
            from hacontrol.adapters.fencing.scsi_pr import ScsiReservations

            devices = m.devices or tuple(lun.device for t in cfg.targets for lun in t.luns)
            reservations = ScsiReservations(devices, node_id=cfg.node(node).id, peer_id=peer.id,
                                            timeout_s=m.timeout_s, reservation_type=cfg.fencing.reservation_type,
                                            require_all=cfg.fencing.require_all_disks,
                                            names={n.id: n.name for n in cfg.nodes})
        elif m.method == "command":
            power.append(CommandFencer(m.argv, m.timeout_s))
        elif m.method == "ipmi":
            from hacontrol.adapters.fencing.ipmi import IpmiFencer

            power.append(IpmiFencer(m, cipher_suite=m.cipher_suite))
        elif m.method == "qmp":
            from hacontrol.adapters.fencing.qmp import QmpFencer

            power.append(QmpFencer(m.socket, m.timeout_s))
    return Fencing(peer.name, reservations, power, cfg.fencing.policy)


def _watchdog(cfg: Config) -> Any:
    if cfg.watchdog_device and os.path.exists(cfg.watchdog_device):
        return DeviceWatchdog(cfg.watchdog_device, device_timeout_s(cfg.timing.session_timeout_s,
                                                                    cfg.timing.watchdog_margin_s))
    return NullWatchdog()
