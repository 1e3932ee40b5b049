"""A real ZooKeeper ensemble for the lab and the tests: Debian's zookeeper package, started by hand.

Each member gets its own directory (zoo.cfg, myid, data) and runs
``QuorumPeerMain`` as a child process, optionally inside a network namespace.
Members can be stopped, started and killed one by one; ``close()`` stops
everything it started, by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


class EnsembleError(RuntimeError):
    pass


@dataclass
class Member:
    myid: int
    host: str
    client_port: int
    quorum_port: int
    election_port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.client_port}"


@dataclass
class Ensemble:
    """``size`` members on ``hosts`` (one per member, or one shared host with distinct ports)."""

    directory: Path
    hosts: Sequence[str] = ("127.0.0.1",)
    size: int = 3
    base_port: int = 0  # 0: pick free ports
    tick_ms: int = 250
    min_session_ms: int = 500
    max_session_ms: int = 20000
    netns: str | None = None
    heap_mb: int = 96
    members: list[Member] = field(default_factory=list)

    def start(self, timeout_s: float = 30.0) -> Ensemble:
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = self._ports()
        for i in range(self.size):
            host = self.hosts[i % len(self.hosts)]
            d = self.directory / f"zk{i + 1}"
            (d / "data").mkdir(parents=True, exist_ok=True)
            c, q, e = ports[3 * i: 3 * i + 3]
            self.members.append(Member(i + 1, host, c, q, e, d))
        for m in self.members:
            self._write_config(m)
        try:
            for m in self.members:
                self.start_member(m.myid)
            self.wait_for_quorum(timeout_s)
        except Exception:
            self.close()
            raise
        return self

    @property
    def connect_string(self) -> str:
        return ",".join(m.address for m in self.members)

    def _ports(self) -> list[int]:
        n = 3 * self.size
        if self.base_port:
            return list(range(self.base_port, self.base_port + n))
        if self.netns is not None:
            raise EnsembleError("give base_port when the ensemble runs in a namespace")
        socks, ports = [], []
        try:
            for _ in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
                ports.append(s.getsockname()[1])
        finally:
            for s in socks:
                s.close()
        return ports

    def _write_config(self, m: Member) -> None:
        lines = [
            f"tickTime={self.tick_ms}",
            "initLimit=20",
            "syncLimit=10",
            f"dataDir={m.directory / 'data'}",
            f"clientPort={m.client_port}",
            f"clientPortAddress={m.host}",
            f"minSessionTimeout={self.min_session_ms}",
            f"maxSessionTimeout={self.max_session_ms}",
            "4lw.commands.whitelist=srvr,mntr,ruok,stat,cons,conf",
            "admin.enableServer=false",
            "standaloneEnabled=false",
            "reconfigEnabled=false",
        ]
        for o in self.members:
            lines.append(f"server.{o.myid}={o.host}:{o.quorum_port}:{o.election_port}")
        (m.directory / "zoo.cfg").write_text("\n".join(lines) + "\n")
        (m.directory / "data" / "myid").write_text(f"{m.myid}\n")

    def member(self, myid: int) -> Member:
        return self.members[myid - 1]

    def start_member(self, myid: int) -> None:
        m = self.member(myid)
        if m.process is not None and m.process.poll() is None:
            return
        m.process = start_server(m.directory, self.netns, self.heap_mb)

    def stop_member(self, myid: int, kill: bool = False, timeout_s: float = 10.0) -> None:
        m = self.member(myid)
        p = m.process
        if p is None or p.poll() is not None:
            m.process = None
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=timeout_s)
        m.process = None

    def four_letter(self, myid: int, word: str, timeout_s: float = 1.0) -> str:
        m = self.member(myid)
        if self.netns:
            out = subprocess.run(["ip", "netns", "exec", self.netns, "python3", "-c", _FLW, m.host,
                                  str(m.client_port), word, str(timeout_s)],
                                 capture_output=True, text=True, timeout=timeout_s + 5, check=False)
            return out.stdout
        return _four_letter(m.host, m.client_port, word, timeout_s)

    def mode(self, myid: int) -> str | None:
        """leader / follower, or None when the member does not serve."""
        try:
            text = self.four_letter(myid, "srvr")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def leader(self) -> int | None:
        for m in self.members:
            if m.process is not None and self.mode(m.myid) == "leader":
                return m.myid
        return None

    def modes(self) -> dict[int, str | None]:
        """Each running member's mode (None: not serving)."""
        return {m.myid: self.mode(m.myid) for m in self.members if m.process is not None}

    def wait_for_quorum(self, timeout_s: float = 30.0) -> int:
        """Wait until a majority serves and one is the leader; return the leader's id."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            modes = self.modes()
            serving = [i for i, mode in modes.items() if mode in ("leader", "follower")]
            leaders = [i for i, mode in modes.items() if mode == "leader"]
            if leaders and len(serving) > self.size // 2:
                return leaders[0]
            for m in self.members:
                if m.process is not None and m.process.poll() is not None:
                    raise EnsembleError(f"zookeeper member {m.myid} exited; see {m.directory / 'server.log'}")
            time.sleep(0.1)
        raise EnsembleError(f"no quorum within {timeout_s} s; logs in {self.directory}")

    def wait_settled(self, timeout_s: float = 30.0, steady_s: float = 1.0) -> int:
        """Wait until every running member serves under one leader and stays so for ``steady_s``.

        A majority with a leader (:meth:`wait_for_quorum`) is enough to serve, but a member still joining or an
        election still settling restarts the leader's session clocks: a test that measures a session's expiry
        must start on a settled ensemble. Returns the leader's id.
        """
        deadline = time.monotonic() + timeout_s
        since: float | None = None
        while time.monotonic() < deadline:
            modes = self.modes()
            leaders = [i for i, mode in modes.items() if mode == "leader"]
            if len(leaders) != 1 or not all(mode in ("leader", "follower") for mode in modes.values()):
                since = None
            elif since is None:
                since = time.monotonic()
            elif time.monotonic() - since >= steady_s:
                return leaders[0]
            time.sleep(0.1)
        raise EnsembleError(f"ensemble not settled within {timeout_s} s ({self.describe()}); "
                            f"logs in {self.directory}")

    def describe(self) -> str:
        """Each member's mode, for a failure message."""
        modes = self.modes()
        return ", ".join(f"zk{m.myid}={modes.get(m.myid, 'stopped') or 'not serving'}" for m in self.members)

    def close(self) -> None:
        for m in self.members:
            self.stop_member(m.myid, kill=True)

    def __enter__(self) -> Ensemble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(directory: Path, netns: str | None, heap_mb: int) -> subprocess.Popen:
    """One member from its directory (zoo.cfg and data written by Ensemble.start): also how the lab restarts
    a member it stopped."""
    argv = ["java", f"-Xmx{heap_mb}m", "-XX:+UseSerialGC", "-Dzookeeper.jmx.log4j.disable=true",
            # slf4j-simple prints no time by default: an election or a session expiry must be placed in time
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSZ",
            "-cp", CLASSPATH, MAIN, str(directory / "zoo.cfg")]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    log = open(directory / "server.log", "ab")  # noqa: SIM115 - handed to the child, closed by the OS
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def _four_letter(host: str, port: int, word: str, timeout_s: float) -> str:
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall(word.encode())
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


_FLW = (
    "import socket,sys\n"
    "h,p,w,t=sys.argv[1],int(sys.argv[2]),sys.argv[3],float(sys.argv[4])\n"
    "try:\n"
    " s=socket.create_connection((h,p),timeout=t);s.sendall(w.encode());b=b''\n"
    " while True:\n"
    "  d=s.recv(4096)\n"
    "  if not d: break\n"
    "  b+=d\n"
    " print(b.decode(errors='replace'))\n"
    "except OSError: pass\n"
)
