"""Fencing: make the peer unable to write the shared disks, then power it off.

:class:`Fencing` runs the peer's configured methods. Persistent reservations
(``scsi_pr``) come first and must succeed when configured: they are what
makes the disks refuse a stale controller. After an unplanned loss the
power methods follow, because reservations fence the disks but not the
peer's kernel, which may still hold VIPs and portals (a frozen or crashed
agent leaves them up): policy "first" stops at the first power method that
confirms the peer off, "all" needs every one. With reservations in place a
failed power method does not block the takeover (the disks are safe; the
duplicate-address check then keeps the addresses from being taken twice);
without reservations, power fencing is the fence and must succeed.
In a planned hand-over the peer is alive and cooperating: power methods never
run then. A fast takeover (CONFIRM_DEAD: the peer went silent on the peer link
while ZooKeeper still names it leader) reverses the order: the power methods
first, and only once one confirmed the peer off, the reservations; a peer that
cannot be confirmed off keeps its keys and the takeover waits for ZooKeeper.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from hacontrol.agent.protocols import AdapterError
from hacontrol.core.actions import FenceMode
from hacontrol.core.model import FenceRecord, Storage

log = structlog.get_logger("hacontrol.fencing")


class PowerFencer(Protocol):
    name: str

    def fence(self, node: str, epoch: int, deadline: float) -> str: ...


class Reservations(Protocol):
    """Persistent reservations on the shared disks (``scsi_pr.ScsiReservations``)."""

    def observe(self, epoch_seen: int) -> Storage: ...

    def take_over(self, epoch: int, deadline: float) -> str: ...

    def register(self, epoch: int, deadline: float) -> None: ...


@dataclass
class Attempt:
    method: str
    ok: bool
    detail: str
    duration_s: float


class Fencing:
    def __init__(self, peer: str, reservations: Reservations | None, power: Sequence[PowerFencer],
                 policy: str = "first"):
        self.peer = peer
        self.reservations = reservations
        self.power = list(power)
        self.policy = policy
        self.last: FenceRecord | None = None
        self.attempts: list[Attempt] = []
        self._invisible_since: float | None = None

    @property
    def configured(self) -> bool:
        return self.reservations is not None or bool(self.power)

    def observe(self, epoch_seen: int) -> Storage:
        if self.reservations is None:
            return Storage(pr=False, visible=True, last_fence=self.last)
        try:
            view = self.reservations.observe(epoch_seen)
        except AdapterError as exc:
            log.warning("pr_observe_failed", error=str(exc))
            return Storage(pr=True, visible=False, last_fence=self.last, invisible_since=self._lost(False))
        return Storage(pr=True, visible=view.visible, my_key_epoch=view.my_key_epoch, holder=view.holder,
                       stale_peer_key=view.stale_peer_key, last_fence=self.last,
                       invisible_since=self._lost(view.visible))

    def _lost(self, visible: bool) -> float | None:
        if visible:
            self._invisible_since = None
        elif self._invisible_since is None:
            self._invisible_since = time.monotonic()
        return self._invisible_since

    def fence_peer(self, epoch: int, mode: FenceMode, deadline: float) -> FenceRecord:
        self.attempts = []
        if mode is FenceMode.CONFIRM_DEAD:
            return self._confirm_dead(epoch, deadline)
        ok = True
        if self.reservations is not None:
            ok = self._try("scsi_pr", lambda: self.reservations.take_over(epoch, deadline))
        powered_off = False
        if ok and mode is FenceMode.UNPLANNED:
            ok, powered_off = self._power(epoch, deadline, pr_done=self.reservations is not None)
        elif ok and mode is FenceMode.PLANNED and self.reservations is None:
            self.attempts.append(Attempt("cooperative", True, f"{self.peer} handed over", 0.0))
        return self._record(epoch, ok, powered_off, mode)

    def _confirm_dead(self, epoch: int, deadline: float) -> FenceRecord:
        _, off = self._power(epoch, deadline, pr_done=False)
        ok = off
        if off and self.reservations is not None:
            ok = self._try("scsi_pr", lambda: self.reservations.take_over(epoch, deadline))
        return self._record(epoch, ok, off, FenceMode.CONFIRM_DEAD)

    def _record(self, epoch: int, ok: bool, powered_off: bool, mode: FenceMode) -> FenceRecord:
        detail = "; ".join(f"{a.method}: {'ok' if a.ok else 'failed'} ({a.detail})" for a in self.attempts)
        self.last = FenceRecord(epoch, ok, time.monotonic(), power_confirmed=powered_off, detail=detail)
        log.info("fence_peer", peer=self.peer, epoch=epoch, mode=mode.value, ok=ok, detail=detail)
        return self.last

    def _power(self, epoch: int, deadline: float, pr_done: bool) -> tuple[bool, bool]:
        """(fenced, powered off) after the power methods, given that reservations did or did not fence."""
        if not self.power:
            return pr_done, False
        results = []
        for fencer in self.power:
            ok = self._try(fencer.name, lambda f=fencer: f.fence(self.peer, epoch, deadline))
            results.append(ok)
            if ok and self.policy == "first":
                break
            if not ok and self.policy == "all":
                break
        off = all(results) and len(results) == len(self.power) if self.policy == "all" else any(results)
        return (pr_done or off), off

    def _try(self, method: str, call) -> bool:
        start = time.monotonic()
        try:
            detail = call() or ""
            ok = True
        except AdapterError as exc:
            detail, ok = str(exc), False
        self.attempts.append(Attempt(method, ok, str(detail)[:200], time.monotonic() - start))
        return ok

    def register_standby(self, epoch: int, deadline: float) -> None:
        if self.reservations is not None:
            self.reservations.register(epoch, deadline)
