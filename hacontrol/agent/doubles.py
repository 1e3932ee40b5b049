"""Honest test doubles for the hardware boundaries, shared between agent *processes* through files.

``hacontrol --doubles DIR`` runs a real agent (real ZooKeeper, real loop) with
these instead of LIO, the network and the disks, so integration tests can
kill, freeze and partition real processes. The doubles keep the semantics
that matter and record what they were told:

- the shared disk (``disk.json``) has SCSI-3 PR semantics: registrations per
  controller, one reservation holder (WRITE EXCLUSIVE – REGISTRANTS ONLY),
  PREEMPT removes the victim's registration;
- the segment (``net.json``) knows which controller holds which address, so a
  claim of an address the peer still holds fails like a duplicate-address
  check would;
- each controller's target state (``<node>.target.json``) outlives its agent
  process, as LIO's configfs state outlives a crashed agent;
- power fencing kills the peer's agent process (pid in ``<node>.pid``) and
  clears its addresses and ALUA state, as a power cut would.

Every call is appended to ``<node>.calls.jsonl`` with a monotonic and a wall
timestamp. All files are updated under an exclusive flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hacontrol.agent.protocols import AdapterError, DuplicateAddress, ManagedAddress
from hacontrol.core.model import AluaState, DataPath, Storage

STANDBY = int(AluaState.STANDBY)


def pr_key(node_id: int, epoch: int) -> int:
    return (node_id << 32) | (epoch & 0xFFFFFFFF)


class SharedState:
    def __init__(self, directory: str | Path, node: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node = node

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[dict[str, Any]]:
        path = self.dir / name
        with open(self.dir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                doc = json.loads(path.read_text()) if path.exists() else {}
                yield doc
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(doc, sort_keys=True))
                os.replace(tmp, path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self, name: str) -> dict[str, Any]:
        with self.locked(name) as doc:
            return dict(doc)

    def record(self, call: str, **fields: Any) -> None:
        line = json.dumps({"t": time.monotonic(), "wall": time.time(), "node": self.node, "call": call, **fields})
        with open(self.dir / f"{self.node}.calls.jsonl", "a") as f:
            f.write(line + "\n")


class RecordingTarget:
    """A controller's target: ALUA state that survives the agent, every change recorded."""

    def __init__(self, state: SharedState):
        self.state = state
        self.name = f"{state.node}.target.json"
        with state.locked(self.name) as doc:
            doc.setdefault("own", STANDBY)
            doc.setdefault("peer", STANDBY)
            doc.setdefault("changed_at", None)

    def observe(self) -> DataPath:
        doc = self.state.read(self.name)
        return DataPath(configured=True, own_group=AluaState(doc["own"]), peer_group=AluaState(doc["peer"]),
                        alua_changed_at=doc.get("changed_at"))

    def configure(self, deadline: float) -> str:
        self.state.record("configure")
        return "recorded"

    def update_config(self, cfg: object) -> None:
        self.state.record("update_config", targets=len(getattr(cfg, "targets", ())))

    def set_alua(self, own: AluaState, peer: AluaState, deadline: float) -> None:
        with self.state.locked(self.name) as doc:
            if doc.get("off"):
                raise AdapterError("controller is powered off")
            if doc["own"] != int(own):
                doc["changed_at"] = time.monotonic()
            doc["own"], doc["peer"] = int(own), int(peer)
        self.state.record("set_alua", own=own.label, peer=peer.label)

    def cut_connections(self, address: str, deadline: float) -> None:
        self.state.record("cut_connections", address=address)


class RecordingNetwork:
    """Addresses on a shared segment: a claim of an address held elsewhere fails like DAD."""

    def __init__(self, state: SharedState):
        self.state = state

    def present(self, addresses: Iterable[ManagedAddress]) -> frozenset[str]:
        held = self.state.read("net.json")
        return frozenset(a.key for a in addresses if held.get(a.key) == self.state.node)

    def claim(self, address: ManagedAddress, deadline: float, check_duplicates: bool = True) -> None:
        with self.state.locked("net.json") as held:
            owner = held.get(address.key)
            if owner not in (None, self.state.node):
                # Even unchecked, two holders on one segment would be a real conflict: refuse like the kernel
                # would not, so that a wrong "released" report shows up in tests.
                raise DuplicateAddress(address.key, f"mac-of-{owner}")
            held[address.key] = self.state.node
        self.state.record("claim", address=address.key)

    def release(self, address: ManagedAddress, deadline: float) -> None:
        with self.state.locked("net.json") as held:
            if held.get(address.key) == self.state.node:
                del held[address.key]
        self.state.record("release", address=address.key)

    def announce(self, address: ManagedAddress, deadline: float) -> None:
        self.state.record("announce", address=address.key)


class SharedDisk:
    """One shared disk with persistent reservations, as a file both agents lock and update."""

    def __init__(self, state: SharedState, node_ids: dict[str, int]):
        self.state = state
        self.ids = node_ids
        self.me = state.node

    def observe(self, epoch_seen: int) -> Storage:
        doc = self.state.read("disk.json")
        regs: dict[str, int] = doc.get("registrations", {})
        mine = regs.get(self.me)
        holder = doc.get("holder")
        holder_view = (holder, regs[holder] & 0xFFFFFFFF) if holder in regs else None
        stale = any(w != self.me and (k & 0xFFFFFFFF) < epoch_seen for w, k in regs.items())
        return Storage(pr=True, visible=True, my_key_epoch=None if mine is None else mine & 0xFFFFFFFF,
                       holder=holder_view, stale_peer_key=stale)

    def take_over(self, epoch: int, deadline: float) -> str:
        key = pr_key(self.ids[self.me], epoch)
        with self.state.locked("disk.json") as doc:
            regs = doc.setdefault("registrations", {})
            regs[self.me] = key
            for who in [w for w in regs if w != self.me]:
                del regs[who]  # PREEMPT of every other key
            doc["holder"] = self.me
        self.state.record("pr_take_over", epoch=epoch, key=hex(key))
        return f"holder {self.me} key {key:#x}"

    def register(self, epoch: int, deadline: float) -> None:
        key = pr_key(self.ids[self.me], epoch)
        with self.state.locked("disk.json") as doc:
            doc.setdefault("registrations", {})[self.me] = key
        self.state.record("pr_register", epoch=epoch, key=hex(key))

    def write_allowed(self, node: str) -> bool:
        doc = self.state.read("disk.json")
        return doc.get("holder") is None or node in doc.get("registrations", {})


class PowerDouble:
    """Powers the peer off: kills its agent process and clears its addresses and target state."""

    name = "power-double"

    def __init__(self, state: SharedState):
        self.state = state

    def fence(self, node: str, epoch: int, deadline: float) -> str:
        pid_file = self.state.dir / f"{node}.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        with self.state.locked("net.json") as held:
            for address in [a for a, owner in held.items() if owner == node]:
                del held[address]
        with self.state.locked(f"{node}.target.json") as doc:
            doc.update(own=STANDBY, peer=STANDBY, off=False)
        self.state.record("power_off", peer=node, epoch=epoch)
        return f"{node} off"


class RecordingWatchdog:
    """Records arm/kick/disarm; 'armed' survives the agent process (like a kernel watchdog)."""

    def __init__(self, state: SharedState):
        self.state = state
        self.name = f"{state.node}.watchdog.json"

    @property
    def armed(self) -> bool:
        return bool(self.state.read(self.name).get("armed"))

    def _set(self, armed: bool, call: str) -> None:
        with self.state.locked(self.name) as doc:
            doc["armed"] = armed
            doc["last"] = time.monotonic()
        self.state.record(call)

    def arm(self) -> None:
        self._set(True, "watchdog_arm")

    def kick(self) -> None:
        self._set(True, "watchdog_kick")

    def disarm(self) -> None:
        self._set(False, "watchdog_disarm")
