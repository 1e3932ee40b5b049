"""How fast this host runs the rig's guests, measured at `rig up`, and a CPU limit that makes it slower on purpose.

**The speed factor.** Both controllers start hacontrol's Python at the same time (the import of the agent:
interpreter, kazoo, pyroute2, rtslib-fb, structlog; what every agent start and every hactl call pays), twice;
the slower controller's faster run, divided by REFERENCE_S, is the factor (never below 1). Every wait on a
guest (boots, agent starts and stops, a cluster settling, a test's time limit) is multiplied by it, so the
rig's limits follow the machine it runs on instead of the one they were first measured on. It is kept in
.rig/state.json (`vagrant/rig status` shows it); HACONTROL_RIG_SPEED_FACTOR overrides the measurement.

**A slower host on purpose.** HACONTROL_RIG_CPU_LIMIT=N (host CPUs, e.g. 1.0 on a 2-core machine) puts every
qemu process of the rig into one cpu cgroup with that quota: how much slower that makes a controller depends on
what the other guests do at the time (measured here: 1.64× once, 3.91× once). HACONTROL_RIG_VM_CPU=N gives each
VM its own quota of N host CPUs instead (0.5: each guest, one vCPU, runs at most half the time): a steadier
slowdown, since one guest's work no longer takes from another's share. The factor measured afterwards shows
what either limit did; they cannot be combined.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .proc import EventLog, RigError

# The probe's result on the machine the rig's limits were set on (2-core Debian 12 host, TCG guests, both
# controllers probing at once, the initiator VM idle): `vagrant/rig status` after `up` printed these.
REFERENCE_S = 3.4
MAX_FACTOR = 10.0
PROBE = ("/opt/hacontrol/venv/bin/python -c 'import time, subprocess, sys; t = time.perf_counter(); "
         "subprocess.run([sys.executable, \"-c\", \"import hacontrol.agent.main\"], check=True); "
         "print(round(time.perf_counter() - t, 3))'")


def measure(guests: dict[str, Any], log: EventLog, runs: int = 2) -> dict[str, Any]:
    """Run the probe on every controller at once, ``runs`` times; the factor and each node's times."""
    def one(name: str) -> list[float]:
        out = guests[name].run(PROBE, timeout=300, check=True).stdout.strip().splitlines()
        return [float(out[-1])]

    times: dict[str, list[float]] = {name: [] for name in guests}
    with ThreadPoolExecutor(max_workers=len(guests)) as pool:
        for _ in range(runs):
            for name, future in {n: pool.submit(one, n) for n in guests}.items():
                times[name] += future.result()
    slowest = max(min(t) for t in times.values())
    measured = round(min(MAX_FACTOR, max(1.0, slowest / REFERENCE_S)), 2)
    override = os.environ.get("HACONTROL_RIG_SPEED_FACTOR", "")
    factor = float(override) if override else measured
    result = {"factor": factor, "measured_factor": measured, "probe_s": times, "reference_s": REFERENCE_S}
    log("speed.measured", **result)
    return result


# --- the CPU limit (cgroup v2, or v1's cpu controller) --------------------------------------------------------

CGROUP_NAME = "hacontrol-rig"
PERIOD_US = 100_000


def cpu_limit() -> float | None:
    """HACONTROL_RIG_CPU_LIMIT as a number of host CPUs, or None."""
    return _cpus("HACONTROL_RIG_CPU_LIMIT", "the host CPUs the VMs may use together", "1.0")


def vm_cpu_limit() -> float | None:
    """HACONTROL_RIG_VM_CPU as host CPUs for each VM, or None."""
    return _cpus("HACONTROL_RIG_VM_CPU", "the host CPUs each VM may use", "0.5")


def _cpus(name: str, what: str, example: str) -> float | None:
    if os.environ.get("HACONTROL_RIG_VM_CPU", "").strip() and os.environ.get("HACONTROL_RIG_CPU_LIMIT", "").strip():
        raise RigError("HACONTROL_RIG_CPU_LIMIT and HACONTROL_RIG_VM_CPU were both given: unset one (the first "
                       "shares one quota among the VMs, the second gives each VM its own)")
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= (os.cpu_count() or 1):
        raise RigError(f"{name}={text!r}: give {what}, between 0.05 and {os.cpu_count()} (e.g. {example})")
    return value


def _cgroup_dir() -> tuple[Path, bool]:
    """(directory, is_v2) of the rig's cgroup."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return root / CGROUP_NAME, True
    return root / "cpu" / CGROUP_NAME, False


def limit_processes(pids: list[int], cpus: float, log: EventLog, own: str | None = None) -> None:
    """Put the processes (qemu: all their threads follow) under a CPU quota of ``cpus`` host CPUs: the rig's
    shared quota, or with ``own`` (a VM's name) a quota of their own in a child of the rig's cgroup."""
    directory, v2 = _cgroup_dir()
    try:
        directory.mkdir(exist_ok=True)
        if own is not None:  # the VM's own child of the rig's cgroup (v2 enables cpu one level further down)
            if v2:
                (directory.parent / "cgroup.subtree_control").write_text("+cpu")
            directory = directory / own
            directory.mkdir(exist_ok=True)
        quota = int(cpus * PERIOD_US)
        if v2:
            (directory.parent / "cgroup.subtree_control").write_text("+cpu")
            (directory / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (directory / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (directory / "cpu.cfs_quota_us").write_text(str(quota))
        for pid in pids:
            (directory / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        which = "HACONTROL_RIG_VM_CPU" if own is not None else "HACONTROL_RIG_CPU_LIMIT"
        raise RigError(f"{which}: cannot use the cpu cgroup {directory}: {exc}") from exc
    log("speed.cpu_limit", cgroup=str(directory), cpus=cpus, pids=pids)


def remove_limit(log: EventLog) -> None:
    """Remove the rig's cgroup once its processes are gone (best effort; `down` calls it)."""
    directory, _ = _cgroup_dir()
    if directory.exists():
        try:
            for child in directory.iterdir():  # the VMs' own quotas (HACONTROL_RIG_VM_CPU)
                if child.is_dir():
                    child.rmdir()
            directory.rmdir()
            log("speed.cpu_limit_removed", cgroup=str(directory))
        except OSError as exc:
            log("speed.cpu_limit_left", cgroup=str(directory), error=str(exc))


def scaled(seconds: float, factor: float) -> float:
    return seconds * max(1.0, factor)


__all__ = ["cpu_limit", "limit_processes", "measure", "remove_limit", "scaled", "vm_cpu_limit"]
