"""The boundaries between the agent and the real systems, as typing.Protocols.

Each protocol has a real implementation in ``hacontrol.adapters``, a null one
where that is legitimate, and a recording double in
``hacontrol.agent.doubles`` for tests. Every method takes a ``deadline`` (a
monotonic time) where it may block, and raises :class:`AdapterError` (or a
subclass) when it cannot do what it was told; the executor turns that into
a failed step and the next tick observes what really happened.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from hacontrol.core.actions import FenceMode
from hacontrol.core.model import AluaState, DataPath, FenceRecord, Storage


class AdapterError(Exception):
    """An adapter could not complete an operation. The message names what and why."""


class DeadlineExceeded(AdapterError):
    pass


class DuplicateAddress(AdapterError):
    """Another host answered for an address we were about to claim (ARP probe or DAD)."""

    def __init__(self, address: str, owner_mac: str):
        super().__init__(f"{address} is still in use by {owner_mac}")
        self.address = address
        self.owner_mac = owner_mac


@dataclass(frozen=True)
class ManagedAddress:
    """An address hacontrol moves between controllers: a VIP or a portal with a home controller."""

    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    interface: str  # already resolved for this controller (per-node overrides applied)

    @property
    def key(self) -> str:
        return str(self.address)


class NetworkPort(Protocol):
    """Addresses on this controller's interfaces (pyroute2: ``hacontrol.adapters.network``)."""

    def present(self, addresses: Iterable[ManagedAddress]) -> frozenset[str]:
        """Keys of the given addresses that are configured on this controller now."""
        ...

    def claim(self, address: ManagedAddress, deadline: float, check_duplicates: bool = True) -> None:
        """Duplicate-address check (unless told the peer released it), add, announce (GARP / NA). Idempotent."""
        ...

    def release(self, address: ManagedAddress, deadline: float) -> None:
        """Cut established TCP connections on the address, then remove it. Idempotent."""
        ...

    def announce(self, address: ManagedAddress, deadline: float) -> None:
        """Re-send gratuitous ARP / unsolicited NA for an address we hold (periodic refresh)."""
        ...


class TargetPort(Protocol):
    """The iSCSI target on this controller (LIO: ``adapters.lio``; tgt: ``adapters.tgt``)."""

    def observe(self) -> DataPath:
        """configured / ALUA states as the target reports them (vips are filled in by the agent)."""
        ...

    def configure(self, deadline: float) -> str:
        """Apply the configured target model (idempotent, all-or-nothing); return a one-line summary."""
        ...

    def set_alua(self, own: AluaState, peer: AluaState, deadline: float) -> None: ...

    def cut_connections(self, address: str, deadline: float) -> None:
        """Drop the target's sessions on one portal address (before the address goes away)."""
        ...


class FencingPort(Protocol):
    """Shared disks and power: ``adapters.fencing``."""

    def observe(self, epoch_seen: int) -> Storage: ...

    def fence_peer(self, epoch: int, mode: FenceMode, deadline: float) -> FenceRecord: ...

    def register_standby(self, epoch: int, deadline: float) -> None: ...


class WatchdogPort(Protocol):
    """``adapters.watchdog``: /dev/watchdog, systemd's watchdog, or none."""

    @property
    def armed(self) -> bool: ...

    def arm(self) -> None: ...

    def kick(self) -> None: ...

    def disarm(self) -> None: ...
