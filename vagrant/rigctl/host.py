"""The host side of the rig: namespace, networks (through a launcher), ZooKeeper, the JBOD; and tearing it down.

Start order: namespace -> launcher networks (bridges; the vagrant path also its private libvirtd) ->
ZooKeeper member addresses on the management bridge -> ZooKeeper -> tgtd. Each daemon is recorded in the
state file as soon as it exists, so `down` can undo a half-finished `up`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import jbod, netns, zookeeper
from .config import Paths, Topology
from .proc import NULL_LOG, Daemon, EventLog, RigError, daemon_from_pid, stop
from .state import RigState

# Under .rig/, everything but these goes at `down`.
KEEP_AFTER_DOWN = {"logs", "lock"}
LOG_RUNS_KEPT = 10


def start(topology: Topology, paths: Paths, state: RigState, launcher, log: EventLog = NULL_LOG) -> None:
    """Namespace, networks, ZooKeeper and tgtd; `state` is saved after each daemon."""
    log_dir = Path(state.log_dir)
    netns.create(topology.namespace, log)
    for daemon in launcher.prepare() or []:
        _record(state, paths, daemon)
    mgmt = topology.networks[topology.zookeeper.network]
    for address in topology.zookeeper.members:
        netns.add_address(topology.namespace, mgmt.bridge, f"{address}/{mgmt.prefix}", log)
    for daemon in zookeeper.start(topology, paths.zookeeper, log_dir, log):
        _record(state, paths, daemon)
    _record(state, paths, jbod.start(topology, paths.jbod, log_dir, log))


def _record(state: RigState, paths: Paths, daemon: Daemon) -> None:
    state.add_daemon(daemon)
    state.save(paths.state_file)


def stop_daemons(daemons: dict[str, Daemon], log: EventLog = NULL_LOG) -> None:
    """ZooKeeper members and tgtd (the launcher has already stopped its own)."""
    if "tgtd" in daemons:
        jbod.shutdown(daemons["tgtd"], log)
    zookeeper.stop_all([d for name, d in daemons.items() if name.startswith("zk")], log)
    for daemon in daemons.values():
        stop(daemon, timeout=10, log=log)


def sweep_namespace(topology: Topology, log: EventLog = NULL_LOG) -> list[int]:
    """Stop whatever still runs in the rig's namespace, by PID, then delete it.

    Everything in that namespace was started by the rig (it creates the namespace): ssh connection masters,
    libvirt's dnsmasq, or daemons whose record was lost with a crashed `up`.
    """
    leftovers = netns.pids(topology.namespace)
    for pid in leftovers:
        try:
            daemon = daemon_from_pid(f"leftover-{pid}", pid)
        except RigError:
            continue
        log("sweep", pid=pid, cmd=_cmdline(pid))
        stop(daemon, timeout=10, log=log)
    remaining = netns.pids(topology.namespace)
    if remaining:
        raise RigError(f"processes still in namespace {topology.namespace}: {remaining}")
    netns.delete(topology.namespace, log)
    return leftovers


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return " ".join(raw.replace("\0", " ").split())[:200]
    except OSError:
        return "?"


def remove_run_files(paths: Paths, log: EventLog = NULL_LOG) -> None:
    if not paths.run.exists():
        return
    for entry in paths.run.iterdir():
        if entry.name in KEEP_AFTER_DOWN:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    _prune_logs(paths.logs)
    log("run-files.removed", kept=sorted(KEEP_AFTER_DOWN))


def _prune_logs(logs: Path) -> None:
    if not logs.exists():
        return
    runs = sorted(p for p in logs.iterdir() if p.is_dir())
    for old in runs[:-LOG_RUNS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
