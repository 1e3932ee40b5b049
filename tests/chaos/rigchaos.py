"""The chaos harness on the VM rig: the cluster's state, the monitor, the probe initiator, one trial.

A trial: make the cluster healthy (faults healed, VMs on, ZooKeeper members up, agents running, one active
and a ready standby), start the monitor (both controllers stream what LIO serves and whether their key is on
the disks) and the probe initiator (writes every 10 ms through both controllers' portals, verifies all at the
end), let I/O run, inject the fault, wait for the recovery the fault expects, heal, wait for a healthy cluster
again, stop everything, and judge the trial with tests/chaos/invariants.py.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigctl import agents  # vagrant/ is on sys.path (tests/rig/conftest.py, tests/chaos/campaign.py)

from tests.chaos.invariants import Sample

HERE = Path(__file__).resolve().parent
GUEST_MONITOR = "/root/guest_monitor.py"
VENV_PYTHON = "/opt/hacontrol/venv/bin/python"


class ChaosError(RuntimeError):
    pass


def settle(healthy: Callable[[], str | None], kick: Callable[[float], None], *, kick_every_s: float,
           timeout_s: float, what: str, detail: Callable[[], Any]) -> str:
    """Poll ``healthy()`` (the active node's name once healthy) every second; every ``kick_every_s`` without
    success call ``kick(seconds left)`` to bring back what is still out. ChaosError with ``detail()`` on timeout."""
    deadline = time.monotonic() + timeout_s
    kicked = time.monotonic()
    while time.monotonic() < deadline:
        active = healthy()
        if active:
            return active
        if time.monotonic() - kicked > kick_every_s:
            kicked = time.monotonic()
            kick(deadline - time.monotonic())
        time.sleep(1.0)
    raise ChaosError(f"{what} did not become healthy within {timeout_s:.0f} s: {detail()}")


@dataclass
class Cluster:
    """The hacontrol cluster on the rig, as the chaos tests see it."""

    rig: Any
    session_timeout_s: float = agents.TIMING["session_timeout_s"]

    @property
    def peer_link(self) -> bool:
        """The deployed configuration has the agents' peer link (fast takeover, failsafe)."""
        config = self.rig.paths.run / "hacontrol.toml"
        return config.exists() and "[peer_link]" in config.read_text()

    @property
    def dead_after_s(self) -> float:
        """Peer link: silence that counts as a dead peer, as deployed (the rig scales it by its speed)."""
        return self.rig.scaled(agents.PEER_DEAD_AFTER_S)

    def status(self) -> dict[str, Any]:
        try:
            return agents.status(self.rig)
        except Exception:
            return {}

    def active(self) -> str | None:
        nodes = [n for n in self.status().get("nodes", []) if n["role"] == "active"]
        return nodes[0]["node"] if len(nodes) == 1 else None

    def peer(self, node: str) -> str:
        return next(n for n in self.rig.controllers if n != node)

    def epoch(self) -> int:
        return int(self.status().get("epoch", -1))

    def healthy(self) -> str | None:
        doc = self.status()
        nodes = {n["node"]: n for n in doc.get("nodes", [])}
        actives = [n for n, d in nodes.items() if d["role"] == "active"]
        if len(actives) != 1 or not doc.get("automatic_failover", {}).get("possible"):
            return None
        standby = nodes.get(self.peer(actives[0]), {})
        return actives[0] if standby.get("role") == "standby" and standby.get("ready") else None

    def restore(self, timeout_s: float = 240) -> str:
        """Heal everything a fault may have left, then wait for one active and a ready standby (the limit
        stretched by the rig's speed factor)."""
        rig = self.rig
        rig.heal()
        for member in range(1, len(rig.topology.zookeeper.members) + 1):
            rig.zk_start(member)
        for node in rig.controllers:
            rig.ensure_running(node)
        for node in rig.controllers:
            rig.ssh(node, "pkill -CONT -f hacontrol.agent.main", timeout=rig.scaled(30))
            agents.start_no_wait(rig, node)
        return settle(self.healthy, self._kick, kick_every_s=rig.scaled(10), timeout_s=rig.scaled(timeout_s),
                      what="the cluster", detail=self.status)

    def _kick(self, remaining_s: float) -> None:
        """A controller that was still rebooting (its hardware watchdog reset it) missed the start in restore(),
        or its peer power-fenced it meanwhile (a fenced VM stays off): bring the VM back if needed and start
        the agent again (idempotent; it is also enabled at boot)."""
        live = {n["node"] for n in self.status().get("nodes", []) if n.get("live_session")}
        for node in self.rig.controllers:
            if node not in live:
                self.rig.ensure_running(node, timeout=max(30.0, remaining_s))
                agents.start_no_wait(self.rig, node)

    def history(self) -> list[dict[str, Any]]:
        out = agents.hactl(self.rig, "history", "--json", "--limit", "50", timeout=30)
        return json.loads(out.stdout) if out.returncode == 0 else []


class Monitor:
    """Both controllers' guest_monitor.py streams, as Samples timestamped on arrival (host monotonic)."""

    def __init__(self, rig: Any, period_s: float = 0.25):
        self.rig = rig
        self.period_s = period_s
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.procs: dict[str, subprocess.Popen] = {}
        self.threads: list[threading.Thread] = []

    def start(self) -> Monitor:
        devices = " ".join(d["by_id"] for d in next(iter(self.rig.jbod.values()), []))
        for node_id, node in enumerate(self.rig.controllers, start=1):
            self.rig.copy_to(node, HERE / "guest_monitor.py", GUEST_MONITOR)
            cmd = f"exec {VENV_PYTHON} {GUEST_MONITOR} {node_id} {self.period_s} {devices}"
            t = threading.Thread(target=self._follow, args=(node, cmd), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _follow(self, node: str, cmd: str) -> None:
        for _ in range(200):  # bounded: reconnects after a power cycle
            if self.stopping.is_set():
                return
            proc = subprocess.Popen(self.rig.ssh_argv(node, cmd), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
            self.procs[node] = proc
            assert proc.stdout is not None
            for line in proc.stdout:
                with contextlib.suppress(ValueError, KeyError):
                    doc = json.loads(line)
                    with self.lock:
                        self.samples.append(Sample(time.monotonic(), node, doc["own_ao"], doc["registered"]))
            proc.wait()
            self.stopping.wait(2.0)

    def stop(self) -> list[Sample]:
        self.stopping.set()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for t in self.threads:
            t.join(timeout=10)
        with self.lock:
            return list(self.samples)


@dataclass
class Probe:
    """The probe initiator in the rig namespace, through both controllers' portals."""

    rig: Any
    workdir: Path
    name: str
    proc: subprocess.Popen | None = None
    started_wall: float = 0.0

    @property
    def stop_file(self) -> Path:
        return self.workdir / f"{self.name}.stop"

    def start(self, lun: int = 0, duration_s: float = 1200, portals: list[str] | None = None) -> Probe:
        """Default portals: both controllers' (hacontrol's ALUA paths); the Pacemaker baseline passes its VIP."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stop_file.unlink(missing_ok=True)
        net = self.rig.topology.networks["san"]
        if portals is None:
            portals = [f"{net.cidr.network_address + agents.PORTAL_HOST[n]}:3260" for n in self.rig.controllers]
        argv = ["ip", "netns", "exec", self.rig.namespace, agents.python(), "-m", "hacontrol.cli.main", "probe",
                "io", *(x for p in portals for x in ("--portal", p)), "--target", agents.IQN, "--lun", str(lun),
                "--initiator-name", agents.PROBE_INITIATOR, "--duration", str(duration_s), "--interval-ms", "10",
                "--command-timeout", "3", "--login-timeout", "1", "--max-backoff", "0.2",
                "--stop-file", str(self.stop_file), "--json"]
        out = open(self.workdir / f"{self.name}.json", "w")  # noqa: SIM115 - the child owns it
        err = open(self.workdir / f"{self.name}.log", "w")  # noqa: SIM115
        self.started_wall = time.time()
        self.proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=agents.REPO, start_new_session=True)
        out.close()
        err.close()
        return self

    def stop(self) -> dict[str, Any]:
        assert self.proc is not None
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        try:
            return json.loads((self.workdir / f"{self.name}.json").read_text())
        except ValueError as exc:
            tail = (self.workdir / f"{self.name}.log").read_text()[-1500:]
            raise ChaosError(f"probe {self.name} produced no report: {tail}") from exc


@dataclass
class Mark:
    """What a fault did and when (host wall clock and monotonic)."""

    fault: str
    params: dict[str, Any] = field(default_factory=dict)
    wall: float = 0.0
    mono: float = 0.0
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # what the fault's own checker found (e.g. PR changes lost)

    def now(self) -> None:
        self.wall, self.mono = time.time(), time.monotonic()


def first_io_after(rep: dict[str, Any], mark: Mark) -> float | None:
    """Seconds from the fault to the first good I/O after the outage it caused (the probe's report), or None."""
    start = datetime.datetime.fromisoformat(rep["started_at"]).timestamp() if rep.get("started_at") else None
    for outage in rep.get("outages", []):
        if start and start + outage["lost_t_s"] >= mark.wall - 0.05 and outage.get("first_io_t_s") is not None:
            return round(start + outage["first_io_t_s"] - mark.wall, 3)
    return None
