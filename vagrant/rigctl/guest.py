"""Reaching the guests: ssh and scp from inside the rig namespace, as root, with the image's key."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .proc import NULL_LOG, EventLog, RigError, in_netns, run, wait_until


@dataclass(frozen=True)
class Ssh:
    namespace: str
    key: Path
    control_dir: Path  # ssh connection sharing: under TCG a fresh key exchange costs the guest ~1 s

    def _options(self) -> list[str]:
        self.control_dir.mkdir(parents=True, exist_ok=True)
        return ["-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C", "-o", "ControlPersist=30"]

    def argv(self, address: str, remote: str | None = None, tty: bool = False) -> list[str]:
        """The full command line (namespace included), e.g. for an interactive `rig ssh`."""
        cmd = ["ssh", *self._options(), *(["-t"] if tty else []), f"root@{address}"]
        if remote is not None:
            cmd.append(remote)
        return in_netns(self.namespace, cmd)

    def run(self, address: str, remote: str, *, timeout: float = 60, check: bool = True,
            input_text: str | None = None, log: EventLog = NULL_LOG) -> subprocess.CompletedProcess[str]:
        proc = run(self.argv(address, remote), timeout=timeout, check=False, input_text=input_text, log=log)
        if check and proc.returncode != 0:
            raise RigError(f"{address}: exit {proc.returncode}: {remote[:200]}\n{proc.stderr.strip()[-1500:]}"
                           f"\n{proc.stdout.strip()[-1500:]}")
        return proc

    def copy_to(self, address: str, sources: list[Path], destination: str, *, timeout: float = 120,
                log: EventLog = NULL_LOG) -> None:
        self._scp(address, [*map(str, sources), f"root@{address}:{destination}"], timeout, log)

    def copy_from(self, address: str, source: str, destination: Path, *, timeout: float = 120,
                  log: EventLog = NULL_LOG) -> None:
        self._scp(address, [f"root@{address}:{source}", str(destination)], timeout, log)

    def _scp(self, address: str, args: list[str], timeout: float, log: EventLog) -> None:
        """scp, once more after a connection failure (exit 255): a guest that was just power-cycled leaves a
        shared connection behind that is dead ("Connection closed"); it is closed before the second try."""
        cmd = in_netns(self.namespace, ["scp", "-q", *self._options(), *args])
        proc = run(cmd, timeout=timeout, check=False, log=log)
        if proc.returncode == 255:
            run(in_netns(self.namespace, ["ssh", *self._options(), "-O", "exit", f"root@{address}"]), timeout=10,
                check=False, log=log)
            proc = run(cmd, timeout=timeout, check=False, log=log)
        if proc.returncode != 0:
            raise RigError(f"exit {proc.returncode}: {shlex.join(cmd)}\n{proc.stderr.strip()[-2000:]}")

    def reachable(self, address: str, timeout: float = 8) -> bool:
        try:
            return self.run(address, "true", timeout=timeout, check=False).returncode == 0
        except RigError:
            return False

    def wait(self, address: str, timeout: float) -> float:
        return wait_until(f"ssh to {address}", lambda: self.reachable(address), timeout=timeout, interval=1.0)


def quote(*words: str) -> str:
    return shlex.join(words)


@dataclass(frozen=True)
class Guest:
    """One VM as the driver talks to it: ssh bound to its management address."""

    name: str
    address: str
    ssh: Ssh
    log: EventLog = NULL_LOG

    def run(self, remote: str, *, timeout: float = 60, check: bool = True,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.ssh.run(self.address, remote, timeout=timeout, check=check, input_text=input_text, log=self.log)

    def copy_to(self, sources: list[Path], destination: str, *, timeout: float = 120) -> None:
        self.ssh.copy_to(self.address, sources, destination, timeout=timeout, log=self.log)

    def copy_from(self, source: str, destination: Path, *, timeout: float = 120) -> None:
        self.ssh.copy_from(self.address, source, destination, timeout=timeout, log=self.log)

    def reachable(self, timeout: float = 8) -> bool:
        return self.ssh.reachable(self.address, timeout)

    def wait(self, timeout: float) -> float:
        return self.ssh.wait(self.address, timeout)
