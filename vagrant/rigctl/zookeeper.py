"""A three-member ZooKeeper ensemble on the host side of the rig, one address per member.

Why on the host and not in the VMs: the controllers are what the faults hit. With ZooKeeper inside them,
freezing or powering off a controller would also take a quorum member with it, and "partition ctrl-a from
ZooKeeper" would have to split ZooKeeper's own quorum traffic too. Here every member has its own address on
the management network, so a partition is a plain filter between one VM and those addresses, and a test
can still stop or freeze a single member by its PID. It is also cheaper: three JVMs under TCG would cost the
guests most of their memory and seconds of CPU per election.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .config import Topology
from .proc import NULL_LOG, Daemon, EventLog, RigError, run, spawn, stop, wait_until

CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"
FOUR_LETTER_WORDS = "srvr,mntr,ruok,stat,conf,cons"


def config_text(topology: Topology, member: int, data_dir: Path) -> str:
    zk = topology.zookeeper
    # tickTime 250 ms admits sessions from 1 s (4 ticks); the limits are set explicitly rather than left to
    # the 2x/20x tick defaults so a 10 s session is still allowed.
    lines = [
        f"tickTime={zk.tick_ms}",
        "initLimit=40",
        "syncLimit=10",
        f"dataDir={data_dir}",
        f"clientPortAddress={zk.members[member - 1]}",
        f"clientPort={zk.client_port}",
        f"minSessionTimeout={zk.min_session_ms}",
        f"maxSessionTimeout={zk.max_session_ms}",
        f"4lw.commands.whitelist={FOUR_LETTER_WORDS}",
        "admin.enableServer=false",
        "autopurge.purgeInterval=0",
    ]
    lines += [f"server.{i}={addr}:2888:3888" for i, addr in enumerate(zk.members, start=1)]
    return "\n".join(lines) + "\n"


def start(topology: Topology, root: Path, log_dir: Path, log: EventLog = NULL_LOG) -> list[Daemon]:
    """Start every member in the rig namespace; returns their daemons (quorum not yet awaited)."""
    return [start_member(topology, root, log_dir, member, log)
            for member in range(1, len(topology.zookeeper.members) + 1)]


def start_member(topology: Topology, root: Path, log_dir: Path, member: int, log: EventLog = NULL_LOG) -> Daemon:
    """Start (or restart, keeping its data) member number ``member`` (1-based)."""
    member_dir = root / f"zk{member}"
    data_dir = member_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "myid").write_text(f"{member}\n")
    cfg = member_dir / "zoo.cfg"
    cfg.write_text(config_text(topology, member, data_dir))
    # C1 only, one compiler thread: a member's start then costs the host a fraction of the CPU burst that three
    # full JITs at once took from the TCG guests (and from tgtd, the shelf) each time a trial restarted them
    cmd = ["java", "-Xms32m", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:CICompilerCount=1",
           "-Djava.net.preferIPv4Stack=true",
           # a time on every line: a session's expiry is then placed beside the agents' journals
           "-Dorg.slf4j.simpleLogger.showDateTime=true",
           "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSZ",
           "-cp", CLASSPATH, "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)]
    return spawn(f"zk{member}", cmd, log_file=log_dir / f"zk{member}.log", netns=topology.namespace, log=log)


def stop_all(daemons: list[Daemon], log: EventLog = NULL_LOG) -> None:
    for daemon in daemons:
        stop(daemon, timeout=10, log=log)


_FOUR_LETTER_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(sys.argv[3].encode())
out = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    out += chunk
print(out.decode())
"""


def four_letter(topology: Topology, address: str, word: str, timeout: float = 10) -> str:
    """Send a four-letter word to one member, from inside the rig namespace (where the address lives)."""
    proc = run(["python3", "-c", _FOUR_LETTER_CLIENT, address, str(topology.zookeeper.client_port), word],
               netns=topology.namespace, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RigError(f"ZooKeeper {address}: {word} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def member_states(topology: Topology) -> dict[str, str]:
    """address -> 'leader' | 'follower' | 'down' (from mntr's zk_server_state)."""
    states = {}
    for address in topology.zookeeper.members:
        try:
            text = four_letter(topology, address, "mntr")
        except (RigError, subprocess.SubprocessError):
            states[address] = "down"
            continue
        fields = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
        states[address] = fields.get("zk_server_state", "down")
    return states


def has_quorum(states: dict[str, str]) -> bool:
    values = list(states.values())
    return values.count("leader") == 1 and values.count("follower") >= len(values) // 2


def wait_quorum(topology: Topology, timeout: float, log: EventLog = NULL_LOG) -> dict[str, str]:
    seen: dict[str, str] = {}

    def ready() -> bool:
        seen.update(member_states(topology))
        return has_quorum(seen)

    took = wait_until("ZooKeeper quorum", ready, timeout=timeout, interval=0.5)
    log("zookeeper.quorum", s=round(took, 1), states=json.dumps(seen))
    return seen
