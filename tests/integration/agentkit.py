"""Two real agent processes against a real ZooKeeper ensemble, with faults: the harness of the agent tests
and of tests/bench/bench_takeover.py.

Each agent reaches each ensemble member through its own loopback TCP proxy.
``partition`` pauses the agent's proxies: nothing is read or forwarded, no
reset is sent, so both sides see silence, as with a pulled cable (TCP
retransmits everything once healed). The agents use the recording doubles
(``hacontrol --doubles``) for the target, addresses, disks and watchdog, so the
files in ``doubles_dir`` tell what each controller did and when (monotonic
time, comparable across processes on one machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODES = ("ctrl-a", "ctrl-b")
ROOT = Path(__file__).resolve().parents[2]


class ZkProxy:
    """Forward one loopback port to one ZooKeeper member; ``paused`` freezes both directions."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.paused = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        while self.paused.is_set() and not self.closed.is_set():
            time.sleep(0.02)  # a connection attempt during a partition just hangs
        try:
            server = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()
            return
        self._socks += [client, server]
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        try:
            while not self.closed.is_set():
                if self.paused.is_set():
                    time.sleep(0.01)
                    continue
                for key, _ in sel.select(timeout=0.05):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            server.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


TIMING = {"session_timeout_s": 2.0, "loop_interval_s": 0.1, "demote_deadline_s": 1.0, "watchdog_margin_s": 0.4,
          "operation_timeout_s": 0.2, "fence_retry_s": 0.5, "standby_settle_s": 0.3, "switchover_timeout_s": 20.0}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_text(chroot: str, fencing: tuple[str, ...] = ("scsi_pr",), timing: dict[str, float] | None = None,
                runtime_dir: str = "/run/hacontrol", link_port: int | None = None) -> str:
    """``link_port``: a peer link on two loopback paths (127.0.1.N and 127.0.2.N) on that UDP port."""
    t = {**TIMING, **(timing or {})}
    lines = ['[cluster]', 'name = "itest"', 'backend = "lio"', 'port_takeover = false',
             f'runtime_dir = "{runtime_dir}"', '']
    for i, node in enumerate(NODES):
        lines += ['[[node]]', f'name = "{node}"', f'id = {i + 1}',
                  '  [[node.interface]]', '  name = "eth1"', f'  address = "192.0.2.{i + 1}/24"']
        if link_port is not None:
            lines.insert(len(lines) - 3, f'peer_link = ["127.0.1.{i + 1}", "127.0.2.{i + 1}"]')
        for method in fencing:
            extra = '  argv = ["/bin/true"]' if method == "command" else ""
            lines += ['  [[node.fencing]]', f'  method = "{method}"', extra]
    lines += ['', '[zookeeper]', 'hosts = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]', f'chroot = "{chroot}"', '',
              '[timing]'] + [f"{k} = {v}" for k, v in t.items()] + [
        '', '[[vip]]', 'address = "192.0.2.10/24"', 'interface = "eth1"']
    if link_port is not None:
        lines += ['', '[peer_link]', 'key = "integration-tests-peer-key"', f'port = {link_port}']
    return "\n".join(lines) + "\n"


@dataclass
class AgentPair:
    ensemble: Any  # hacontrol.lab.zookeeper.Ensemble
    chroot: str
    work: Path
    fencing: tuple[str, ...] = ("scsi_pr",)
    timing: dict[str, float] = field(default_factory=dict)
    peer_link: bool = False
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    proxies: dict[str, list[ZkProxy]] = field(default_factory=dict)
    marks: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # an election still settling (a member restarted by an earlier test) restarts the sessions' clocks:
        # the agent tests time session expiries, so they start on a settled ensemble
        self.ensemble.wait_settled(30)
        self.doubles = self.work / "doubles"
        self.doubles.mkdir(parents=True, exist_ok=True)
        self.config = self.work / "hacontrol.toml"
        self.runtime_dir = self.work / "run"
        self.config.write_text(config_text(self.chroot, self.fencing, self.timing, str(self.runtime_dir),
                                           free_udp_port() if self.peer_link else None))
        for node in NODES:
            self.proxies[node] = [ZkProxy((m.host, m.client_port)) for m in self.ensemble.members]

    @property
    def session_timeout_s(self) -> float:
        return {**TIMING, **self.timing}["session_timeout_s"]

    def mark(self, label: str) -> float:
        t = time.monotonic()
        self.marks.append((t, label))
        return t

    def zk_hosts(self, node: str) -> str:
        return ",".join(p.address for p in self.proxies[node])

    def start(self, node: str, *extra: str, env: dict[str, str] | None = None, guardian: bool = False) -> None:
        """Start an agent. Without ``guardian`` its kill is a controller's death (nothing steps it down)."""
        log = open(self.work / f"{node}.log", "ab")  # noqa: SIM115 - the child owns it
        argv = [sys.executable, "-m", "hacontrol.agent.main", "--config", str(self.config), "--node", node,
                "--doubles", str(self.doubles), "--zk-hosts", self.zk_hosts(node), "--log-format", "json",
                "--handover-wait-s", "3", *([] if guardian else ["--no-guardian"]), *extra]
        self.procs[node] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                            start_new_session=True, env={**os.environ, **(env or {})})
        log.close()

    def start_all(self, guardian: bool = False) -> None:
        for node in NODES:
            self.start(node, guardian=guardian)

    def signal(self, node: str, sig: signal.Signals) -> None:
        self.procs[node].send_signal(sig)

    def kill(self, node: str) -> None:
        self.signal(node, signal.SIGKILL)
        self.procs[node].wait(timeout=10)

    def partition(self, node: str, cut: bool = True) -> None:
        for p in self.proxies[node]:
            (p.paused.set if cut else p.paused.clear)()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=8)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for proxies in self.proxies.values():
            for px in proxies:
                px.close()

    # --- looking at what happened -------------------------------------------------------------

    def hactl(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "hacontrol.cli.main", *args, "--config", str(self.config)]
        if "--zk-hosts" not in args:
            argv += ["--zk-hosts", self.ensemble.connect_string]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
                              env={**os.environ, **(env or {})})

    def status(self) -> dict[str, Any]:
        out = self.hactl("status", "--json")
        if out.returncode != 0:
            return {}
        return json.loads(out.stdout)

    def leader(self) -> tuple[str, int] | None:
        doc = self.status()
        leader = doc.get("leader")
        return None if not leader else (leader["node"], leader["epoch"])

    def role(self, node: str) -> str | None:
        doc = self.status()
        return next((n["role"] for n in doc.get("nodes", []) if n["node"] == node), None)

    def calls(self, node: str) -> list[dict[str, Any]]:
        path = self.doubles / f"{node}.calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; ZooKeeper: "
                             f"{self.ensemble.describe()}; logs in {self.work} and {self.ensemble.directory}")

    def active_steady(self) -> str:
        """Wait until exactly one controller is active with its VIP; return its name."""
        def one() -> str | None:
            doc = self.status()
            actives = [n["node"] for n in doc.get("nodes", []) if n["role"] == "active" and n["vips"]]
            return actives[0] if len(actives) == 1 else None
        return self.wait_for(one, 20, "one active controller")


def writable_intervals(pair: AgentPair, end: float) -> dict[str, list[tuple[float, float]]]:
    """When each controller was Active/Optimized *and* registered on the shared disk (its writes accepted)."""
    events: list[tuple[float, str, dict[str, Any]]] = []
    for node in NODES:
        events += [(c["t"], node, c) for c in pair.calls(node)]
    events.sort(key=lambda e: e[0])
    ao = dict.fromkeys(NODES, False)
    registered = dict.fromkeys(NODES, False)
    since: dict[str, float | None] = dict.fromkeys(NODES, None)
    out: dict[str, list[tuple[float, float]]] = {n: [] for n in NODES}

    def update(t: float) -> None:
        for n in NODES:
            on = ao[n] and registered[n]
            if on and since[n] is None:
                since[n] = t
            elif not on and since[n] is not None:
                out[n].append((since[n], t))
                since[n] = None

    for t, node, c in events:
        call = c["call"]
        if call == "set_alua":
            ao[node] = c["own"] == "active/optimized"
        elif call == "pr_take_over":
            registered = {n: n == node for n in NODES}
        elif call == "pr_register":
            registered[node] = True
        elif call == "power_off":
            ao[c["peer"]] = False
        update(t)
    for n in NODES:
        if since[n] is not None:
            out[n].append((since[n], end))
    return out


def overlaps(intervals: dict[str, list[tuple[float, float]]]) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    a, b = (intervals[n] for n in NODES)
    return [(x, y) for x in a for y in b if x[0] < y[1] and y[0] < x[1]]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
