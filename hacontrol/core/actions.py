"""The steps a plan is made of: plain data, executed in order by ``hacontrol.agent.execute``.

The executor runs a plan's actions one after another and stops at the first
that fails; whatever it did is observed on the next tick. Actions whose
``needs_lease`` is true are refused by the executor once the plan's
``lease_valid_until`` has passed, so a slow step (power fencing can take many
seconds) never leads to promoting on a lease that expired meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from hacontrol.core.model import AluaState, Role


class FenceMode(Enum):
    """How hard to fence.

    PLANNED: the peer handed over cooperatively; take its disk keys away
    (persistent-reservation preempt) but never power it off.
    UNPLANNED: the peer vanished; run every configured method in order.
    CONFIRM_DEAD: the peer went silent on the peer link while ZooKeeper still
    names it leader (fast takeover); power it off first, and only if a power
    method confirms it off, take its disk keys away.
    """

    PLANNED = "planned"
    UNPLANNED = "unplanned"
    CONFIRM_DEAD = "confirm_dead"


@dataclass(frozen=True)
class Action:
    lease_bound: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def needs_lease(self) -> bool:
        return self.lease_bound


@dataclass(frozen=True)
class ClaimLeadership(Action):
    """Create the leader znode and advance the epoch counter from ``expected_epoch``, atomically."""

    expected_epoch: int


@dataclass(frozen=True)
class TakeOverLeadership(Action):
    """Fast takeover, after FenceDeadPeer confirmed ``stale_node`` off: in one ZooKeeper multi guarded by the
    epoch counter's version, delete the dead peer's leader znode (its session has not expired yet), create ours
    and advance the epoch from ``expected_epoch``. A claimer with a stale view fails as a whole."""

    expected_epoch: int
    stale_node: str


@dataclass(frozen=True)
class ReleaseLeadership(Action):
    """Delete the leader znode if our session owns it (planned hand-off only)."""

    epoch: int


@dataclass(frozen=True)
class FencePeer(Action):
    """Make the peer unable to write the shared disks under any epoch older than ``epoch``.

    With persistent reservations: register our key for ``epoch``, preempt
    every other key, hold the reservation, and read the keys back.
    """

    lease_bound: ClassVar[bool] = True
    epoch: int
    mode: FenceMode


@dataclass(frozen=True)
class FenceDeadPeer(Action):
    """Fast takeover, before claiming: power the silent peer off (confirmed), then fence the disks under
    ``epoch`` (the one the claim will create). Not lease-bound (we hold no lease yet); the executor refuses it
    while we have promised the peer, over the link, not to fence or claim."""

    epoch: int


@dataclass(frozen=True)
class RegisterStandby(Action):
    """Register our key for ``epoch`` on the shared disks without reserving or preempting."""

    epoch: int


@dataclass(frozen=True)
class SetAlua(Action):
    """Set the ALUA state of our own port group and of the peer's group as this controller presents it."""

    own: AluaState
    peer: AluaState

    @property
    def needs_lease(self) -> bool:
        # Making our own ports accept I/O is promotion; anything else is a report or a step down.
        return self.own.accepts_io


@dataclass(frozen=True)
class AddVips(Action):
    """Claim the virtual addresses (duplicate-address check first) and announce them."""

    lease_bound: ClassVar[bool] = True
    addresses: frozenset[str]
    check_duplicates: bool = True  # False only when the peer reported these addresses released (hand-over)


@dataclass(frozen=True)
class AnnounceVips(Action):
    """Re-send gratuitous ARP / unsolicited NA for addresses we hold (switches and hosts forget)."""

    addresses: frozenset[str]


@dataclass(frozen=True)
class RemoveVips(Action):
    """Cut the iSCSI connections on these addresses, then remove them."""

    addresses: frozenset[str]


@dataclass(frozen=True)
class AdoptPeerPorts(Action):
    """Bring up the (fenced) peer's portal addresses and present its target port here, active."""

    lease_bound: ClassVar[bool] = True
    epoch: int


@dataclass(frozen=True)
class ReleasePeerPorts(Action):
    """Hand the peer's portal addresses and target port back: Transitioning, cut, remove."""


@dataclass(frozen=True)
class BringUpOwnPorts(Action):
    """Add this controller's own portal addresses (the peer does not host them)."""


@dataclass(frozen=True)
class TakeDownOwnPorts(Action):
    """Remove this controller's own portal addresses: our session is lapsing, so the peer may adopt them soon."""


@dataclass(frozen=True)
class ConfigureTarget(Action):
    """Apply the configured target model here (idempotent; both roles; never unmaps on failover)."""


@dataclass(frozen=True)
class LoadReservations(Action):
    """Before this controller's ports go Active/Optimized under ``epoch``: make its LIO hold the initiators'
    persistent reservations the previous active published (ZooKeeper). ``keep_local``: this controller
    already served under this epoch (an agent restarted while active): its own LIO is the newer truth, and it
    is published instead of overwritten."""

    epoch: int
    keep_local: bool = False


@dataclass(frozen=True)
class PublishReservations(Action):
    """Write this controller's initiators' persistent reservations to ZooKeeper, guarded by ``epoch`` (a
    deposed active's write fails), where the next active loads them from."""

    epoch: int


@dataclass(frozen=True)
class ArmWatchdog(Action):
    """Open the watchdog before acting as active; it resets the node if the agent stops kicking."""


@dataclass(frozen=True)
class KickWatchdog(Action):
    """Hold the watchdog off for another ``watchdog_timeout_s``. ``until`` is the last instant at which the
    confirmation that allowed it still covers a kick (the confirmation + ``kick_window_s``): a kick that
    only gets its turn later is skipped, not carried out on a stale confirmation."""

    lease_bound: ClassVar[bool] = True
    until: float


@dataclass(frozen=True)
class DisarmWatchdog(Action):
    pass


@dataclass(frozen=True)
class Publish(Action):
    """Write our member znode so the peer and operators see what we do."""

    role: Role
    own_alua: AluaState | None
    vips: frozenset[str]
    ready: bool
    epoch_seen: int
    handed_off: str | None = None
    hosts_peer_ports: bool = False
    maintenance_seen: bool = False
    reason: str = ""
    blockers: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()


@dataclass(frozen=True)
class FinishSwitchover(Action):
    """Mark a switchover intent done (by the new active) or refused (by the current one)."""

    intent_id: str
    outcome: str  # done | refused
    reason: str = ""


@dataclass(frozen=True)
class KeyLost(Action):
    """Our reservation key vanished while we served: follow the configured policy (standby or reboot)."""

    policy: str
