"""The local lab: two controllers, a 3-member ZooKeeper ensemble and a client, on one Linux machine (root).

Namespaces ``hclab-ctrl-a``, ``hclab-ctrl-b``, ``hclab-client`` and ``hclab-zk`` share one bridge (in
``hclab-sw``); every address lives inside them. Each controller namespace runs a real tgtd and a real
``hacontrol`` agent with the real ZooKeeper, network and tgt adapters; the two tgtds export the same
backing file (the "shared disk"). Power fencing is the lab's own fence agent (``hactl lab power-off``):
it kills the controller's processes, drops its addresses and pulls its links, as a power cut would.

The agents' peer link has two paths: a direct cable between the two controller namespaces (``ic0``,
10.77.2.0/24: the cluster link) and the shared segment (the data network). ``Lab(peer_link=False)``
leaves it out, so detection falls back to ZooKeeper's session expiry (``hactl lab demo --no-peer-link``).

State (PIDs, paths) is kept in ``<lab dir>/state.json``; ``down`` ends every process it lists, by PID,
checking that the PID still runs what the lab started, and removes the namespaces and the lab directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hacontrol.lab import fence_agent, netns, tgtd
from hacontrol.lab.zookeeper import Ensemble, start_server

PREFIX = "hclab"
NODES = ("ctrl-a", "ctrl-b")
MEMBERS = (*NODES, "client", "zk")
VIP_INDEX = 10  # the VIP is the 10th address from the top of the lab segment
IQN = "iqn.2026-11.org.hacontrol.lab:array"
SERIAL = "4c61624c554e31a5b6c7d8e9f0a1b2c3"
LUN_ID = 1  # tgt keeps LUN 0 for itself
ZK_BASE_PORT = 2181
ZK_MEMBERS = 3
ZK_HEAP_MB = 64
TGT_CONTROL_PORTS = {"ctrl-a": 7101, "ctrl-b": 7102}
DISK_MB = 256
DEFAULT_DIR = os.environ.get("HACONTROL_LAB_DIR", "/run/hacontrol-lab")
TIMING = {"session_timeout_s": 2.0, "loop_interval_s": 0.1, "demote_deadline_s": 1.0, "watchdog_margin_s": 0.4,
          "operation_timeout_s": 0.25, "fence_retry_s": 0.5, "standby_settle_s": 0.3, "switchover_timeout_s": 20.0,
          "startup_grace_s": 5.0, "heartbeat_interval_s": 0.1, "peer_dead_after_s": 0.3}
INTERCONNECT = "ic0"  # the direct cable between the controllers (peer link path 0)
INTERCONNECT_NET = "10.77.2"  # /24, inside the two controller namespaces only
PEER_LINK_KEY = "lab-peer-link-key-not-a-secret"  # the lab's own; a real cluster gets a random one


class LabError(RuntimeError):
    pass


@dataclass
class Lab:
    directory: Path = Path(DEFAULT_DIR)
    peer_link: bool = True

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def config_file(self) -> Path:
        return self.directory / "hacontrol.toml"

    # --- state ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One lab command at a time on this machine (a second one is refused, not queued)."""
        Path("/run/lock").mkdir(parents=True, exist_ok=True)
        with open("/run/lock/hacontrol-lab.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LabError("another hactl lab command is running on this machine; wait for it or "
                               "run `hactl lab down` once it has finished") from None
            yield

    def is_up(self) -> bool:
        return bool(self.state().get("namespaces")) and any(
            os.path.exists(os.path.join(netns.NETNS_DIR, n)) for n in self.state()["namespaces"])

    # --- up / down ------------------------------------------------------------------------------

    def up(self) -> dict[str, Any]:
        if self.is_up():
            raise LabError(f"the lab is already up (state in {self.state_file}); run `hactl lab down` first")
        leftovers = [n for n in netns.list_namespaces() if n.startswith(PREFIX + "-")]
        if leftovers:
            raise LabError(f"namespaces {leftovers} exist but no lab state does: run `hactl lab down` to clean up")
        self.directory.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"started": time.time(), "pids": {}, "namespaces": [], "peer_link": self.peer_link}
        self._save(state)
        try:
            self._build(state)
        except BaseException:
            self.down()
            raise
        return state

    def _build(self, state: dict[str, Any]) -> None:
        topo = netns.Topology(PREFIX, ipv6_network=None)
        state["namespaces"] = [topo.switch] + [f"{PREFIX}-{m}" for m in MEMBERS]
        self._save(state)
        topo.create(MEMBERS)
        addresses = {name: str(m.address) for name, m in topo.members.items()}
        state.update(addresses=addresses, vip=str(topo.address(VIP_INDEX)), netns={n: topo.members[n].netns
                                                                                  for n in MEMBERS})
        self._save(state)
        _interconnect(state["netns"])
        disk = self.directory / "shared-disk.img"
        with open(disk, "wb") as f:
            f.truncate(DISK_MB * 1024 * 1024)
        state["disk"] = str(disk)
        ens = Ensemble(self.directory / "zk", hosts=(topo.members["zk"].address.ip.compressed,),
                       base_port=ZK_BASE_PORT, netns=state["netns"]["zk"], tick_ms=250, heap_mb=ZK_HEAP_MB,
                       size=ZK_MEMBERS)
        try:
            ens.start(timeout_s=60)
        finally:
            state["pids"].update({f"zk{m.myid}": m.process.pid for m in ens.members if m.process is not None})
            self._save(state)
        state["zk_hosts"] = ens.connect_string
        self.config_file.write_text(config_text(state, self.directory))
        self._save(state)
        for node in NODES:
            self.start_node(node, state)

    def start_node(self, node: str, state: dict[str, Any] | None = None) -> None:
        """Power a controller on: link up, tgtd, then the agent."""
        state = state or self.state()
        ns = state["netns"][node]
        _link(ns, up=True)
        _link(ns, up=True, name=INTERCONNECT)
        vip = state["vip"].split("/")[0]
        t = tgtd.start(ns, TGT_CONTROL_PORTS[node], [vip], log_path=self.directory / f"{node}-tgtd.log",
                       nonlocal_bind=True)
        state["pids"][f"{node}-tgtd"] = t.pid
        self._save(state)
        log = open(self.directory / f"{node}-agent.log", "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "HACONTROL_TGT_CONTROL_PORT": str(TGT_CONTROL_PORTS[node]), "PYTHONUNBUFFERED": "1"}
        # --no-guardian: the lab's kill is a controller's death, after which nothing of it runs
        agent = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "hacontrol.agent.main",
                                  "--config", str(self.config_file), "--node", node, "--log-format", "json",
                                  "--no-guardian"],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 start_new_session=True)
        log.close()
        state["pids"][f"{node}-agent"] = agent.pid
        state.setdefault("off", {})[node] = False
        self._save(state)

    def down(self) -> list[str]:
        """End everything the lab started and remove it; safe to run at any point, and twice."""
        state = self.state()
        done: list[str] = []
        for name, pid in sorted(state.get("pids", {}).items()):
            if _stop_pid(pid):
                done.append(f"stopped {name} ({pid})")
        # A process the lab started but could not record (Ctrl-C between a fork and the state file) still runs
        # inside one of the lab's own namespaces: end those too, by PID, before the namespaces go.
        for ns in sorted(n for n in netns.list_namespaces() if n.startswith(PREFIX + "-")):
            for pid in netns.pids_in(ns):
                if _stop_pid(pid):
                    done.append(f"stopped unrecorded process {pid} in {ns}")
        for port in TGT_CONTROL_PORTS.values():
            for suffix in ("", ".lock"):
                with contextlib.suppress(FileNotFoundError):
                    (tgtd.IPC_DIR / f"socket.{port}{suffix}").unlink()
        for name in netns.sweep(PREFIX):
            done.append(f"removed namespace {name}")
        if self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
            done.append(f"removed {self.directory}")
        return done

    # --- faults ---------------------------------------------------------------------------------

    def kill(self, node: str) -> None:
        """The controller's software dies (agent and target, kill -9); its kernel keeps its addresses."""
        state = self.state()
        for proc in ("agent", "tgtd"):
            _stop_pid(state["pids"].get(f"{node}-{proc}"), sig=signal.SIGKILL)

    def freeze(self, node: str, frozen: bool = True) -> None:
        pid = self.state()["pids"].get(f"{node}-agent")
        if pid and _ours(pid):
            os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def power_off(self, node: str) -> None:
        """Lab power fencing (the same code the agents run as their fence agent)."""
        try:
            fence_agent.power_off(self.directory, node)
        except RuntimeError as exc:
            raise LabError(str(exc)) from exc

    def partition(self, node: str, cut: bool = True) -> None:
        """Drop every packet between the controller and the ZooKeeper namespace (no reset: silence)."""
        state = self.state()
        ns = state["netns"][node]
        zk_ip = state["addresses"]["zk"].split("/")[0]
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "hclab"],
                       capture_output=True, check=False, timeout=5)
        if cut:
            rules = (f"table inet hclab {{ chain out {{ type filter hook output priority 0; ip daddr {zk_ip} drop; }}"
                     f" chain in {{ type filter hook input priority 0; ip saddr {zk_ip} drop; }} }}")
            subprocess.run(["ip", "netns", "exec", ns, "nft", rules], check=True, capture_output=True, timeout=5)

    def zk_stop(self) -> None:
        """The whole ensemble stops (every member, SIGTERM): a ZooKeeper outage."""
        state = self.state()
        for myid in range(1, ZK_MEMBERS + 1):
            _stop_pid(state["pids"].get(f"zk{myid}"))

    def zk_start(self) -> None:
        """Start every member that is not running, from its own directory (its data survives)."""
        state = self.state()
        for myid in range(1, ZK_MEMBERS + 1):
            pid = state["pids"].get(f"zk{myid}")
            if pid and _ours(pid) and _alive(pid):
                continue
            proc = start_server(self.directory / "zk" / f"zk{myid}", state["netns"]["zk"], ZK_HEAP_MB)
            state["pids"][f"zk{myid}"] = proc.pid
            self._save(state)

    def heal(self) -> None:
        state = self.state()
        for node in NODES:
            self.partition(node, cut=False)
            self.freeze(node, frozen=False)
            if state.get("off", {}).get(node):
                self.start_node(node)


def config_text(state: dict[str, Any], directory: Path) -> str:
    """The lab's hacontrol.toml: backend tgt (VIP-only failover), lab power fencing, the lab's ensemble, and
    (unless the lab was brought up without it) the peer link on the interconnect and the data segment."""
    link = state.get("peer_link", True)
    lines = ['[cluster]', 'name = "lab"', 'backend = "tgt"', 'port_takeover = false',
             f'runtime_dir = "{directory / "run"}"', '']
    for i, node in enumerate(NODES):
        paths = f'["{INTERCONNECT_NET}.{i + 1}", "{state["addresses"][node].split("/")[0]}"]'
        lines += ['[[node]]', f'name = "{node}"', f'id = {i + 1}', *([f"peer_link = {paths}"] if link else []),
                  '  [[node.interface]]', '  name = "eth0"', f'  address = "{state["addresses"][node]}"',
                  '  [[node.fencing]]', '  method = "command"',
                  f'  argv = ["{sys.executable}", "-m", "hacontrol.lab.fence_agent", "{node}", "{directory}"]',
                  '  timeout_s = 10.0', '']
    hosts = ", ".join(f'"{h}"' for h in state["zk_hosts"].split(","))
    lines += ['[zookeeper]', f'hosts = [{hosts}]', 'chroot = "/hacontrol/lab"', '', '[timing]']
    lines += [f"{k} = {v}" for k, v in TIMING.items()]
    if link:
        lines += ['', '[peer_link]', f'key = "{PEER_LINK_KEY}"']
    lines += ['', '[[vip]]', f'address = "{state["vip"]}"', 'interface = "eth0"', '',
              '[network]', 'dad_timeout_s = 0.1', '',
              '[[target]]', f'iqn = "{IQN}"', f'allowed_networks = ["{netns.LAB_NETWORK}"]', '  [[target.lun]]',
              f'  id = {LUN_ID}',
              '  name = "lab01"', f'  device = "{state["disk"]}"', f'  serial = "{SERIAL}"', '  thin = true', '',
              '[watchdog]', 'device = ""']
    return "\n".join(lines) + "\n"


def _link(ns: str, up: bool, name: str = "eth0") -> None:
    subprocess.run(["ip", "-n", ns, "link", "set", name, "up" if up else "down"], check=True,
                   capture_output=True, timeout=5)


def _interconnect(namespaces: dict[str, str]) -> None:
    """A direct cable between the two controllers: a veth pair born with its ends in their namespaces."""
    a, b = (namespaces[n] for n in NODES)
    subprocess.run(["ip", "-n", a, "link", "add", INTERCONNECT, "type", "veth", "peer", "name", INTERCONNECT,
                    "netns", b], check=True, capture_output=True, timeout=5)
    for i, ns in enumerate((a, b), start=1):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{INTERCONNECT_NET}.{i}/24", "dev", INTERCONNECT],
                       check=True, capture_output=True, timeout=5)
        _link(ns, up=True, name=INTERCONNECT)


def _ours(pid: int) -> bool:
    """The PID still runs something this lab started (not a recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return any(word in cmdline for word in (b"hacontrol", b"tgtd", b"QuorumPeerMain"))


def _stop_pid(pid: int | None, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 5.0) -> bool:
    if not pid or not _ours(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own children so they do not linger as zombies
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
