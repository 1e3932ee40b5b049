"""The "JBOD": shared disks exported by tgt on the host, logged into by both controllers.

It stands in for a dual-ported SAS shelf: both controllers see the same LUNs (same WWN), and tgt implements
SCSI-3 persistent reservations (not PREEMPT AND ABORT), which is what PR fencing needs. tgtd runs in the rig
namespace with a private /run, so its control socket cannot collide with other tgtd instances on the host.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import Topology
from .netns import enter_command, private_mounts_command
from .proc import NULL_LOG, Daemon, EventLog, RigError, run, spawn, stop

CONTROL_PORT = 0  # the socket lives in the private /run, so the default port cannot clash


def backing_files(topology: Topology, root: Path) -> list[Path]:
    return [root / f"{disk.name}.img" for disk in topology.jbod.disks]


def start(topology: Topology, root: Path, log_dir: Path, log: EventLog = NULL_LOG) -> Daemon:
    root.mkdir(parents=True, exist_ok=True)
    for disk, path in zip(topology.jbod.disks, backing_files(topology, root), strict=True):
        with path.open("wb") as f:
            f.truncate(disk.size_mib * 1024 * 1024)  # sparse
    portal = f"{topology.jbod.portal}:{topology.jbod.port}"
    cmd = private_mounts_command({}, ["tgtd", "-f", "-C", str(CONTROL_PORT), "--iscsi", f"portal={portal}"])
    daemon = spawn("tgtd", cmd, log_file=log_dir / "tgtd.log", netns=topology.namespace, log=log)
    _wait_control(daemon, log)
    _configure(topology, daemon, root, log)
    return daemon


def tgtadm(daemon: Daemon, *args: str, log: EventLog = NULL_LOG, check: bool = True) -> str:
    cmd = enter_command(daemon.pid, ["tgtadm", "-C", str(CONTROL_PORT), "--lld", "iscsi", *args])
    return run(cmd, timeout=20, check=check, log=log).stdout


def _wait_control(daemon: Daemon, log: EventLog) -> None:
    for _ in range(50):
        if not daemon.alive():
            raise RigError("tgtd exited at start; see tgtd.log")
        cmd = enter_command(daemon.pid, ["tgtadm", "-C", str(CONTROL_PORT), "--lld", "iscsi", "--op", "show",
                                         "--mode", "target"])
        if run(cmd, timeout=10, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RigError("tgtd did not answer tgtadm within 5 s")


def _configure(topology: Topology, daemon: Daemon, root: Path, log: EventLog) -> None:
    jb = topology.jbod
    tgtadm(daemon, "--op", "new", "--mode", "target", "--tid", "1", "-T", topology.jbod_iqn, log=log)
    for lun, (disk, path) in enumerate(zip(jb.disks, backing_files(topology, root), strict=True), start=1):
        tgtadm(daemon, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(lun), "-b", str(path),
               log=log)
        # Our own vendor string lets the guests' multipath.conf blacklist the shelf, and a stable serial
        # keeps /dev/disk/by-id names the same on every run.
        params = f"vendor_id={jb.vendor},product_id={jb.product},product_rev=1,scsi_sn=hacrig-{disk.name}"
        tgtadm(daemon, "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", str(lun),
               "--params", params, log=log)
    # Only the controllers' shelf-side addresses may log in (as a SAS shelf only has cables to them).
    for node in topology.controllers:
        address = node.address(topology.networks[jb.network])
        tgtadm(daemon, "--op", "bind", "--mode", "target", "--tid", "1", "-I", address, log=log)


def show(daemon: Daemon) -> str:
    return tgtadm(daemon, "--op", "show", "--mode", "target")


def shutdown(daemon: Daemon, log: EventLog = NULL_LOG) -> None:
    # tgtd ignores SIGTERM while it has targets: delete the target, then ask the system to shut down
    # (refused while targets exist); SIGTERM then ends it at once.
    if daemon.alive():
        tgtadm(daemon, "--op", "delete", "--mode", "target", "--tid", "1", "--force", log=log, check=False)
        tgtadm(daemon, "--op", "delete", "--mode", "system", log=log, check=False)
    stop(daemon, timeout=5, log=log)
