"""The vocabulary of a decision: why a plan is what it is (:class:`Reason`), what keeps a standby from taking
over (:class:`Blocker`), and the :class:`Plan` itself. ``hacontrol.core.decide`` makes plans; the agent loop,
the metrics, hactl and the model read them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from hacontrol.core.actions import Action
from hacontrol.core.model import Role


class Reason(Enum):
    """Why a plan is what it is. Stable names: logs, metrics and tests use them."""

    # stepping down (safety: these run even in maintenance mode)
    NO_SESSION = "no_session"
    LEASE_EXPIRED = "lease_expired"
    SUPERSEDED = "superseded"
    KEY_LOST = "key_lost"
    UNFENCED_SERVING = "unfenced_serving"
    # holding
    SUSPENDED_HOLDING = "suspended_holding"
    FAILSAFE = "failsafe"  # ZooKeeper unreachable: serving on the peer's promise (peer link)
    # standby
    STANDBY = "standby"
    ALIGNING = "aligning"
    NOT_READY = "not_ready"
    WAITING_FOR_SWITCHOVER = "waiting_for_switchover"
    CLAIMING = "claiming"
    STARTUP_WAIT = "startup_wait"
    FAST_TAKEOVER = "fast_takeover"  # the leader went silent on the peer link: power it off, then claim
    PROMISED = "promised"  # we promised the active (serving without ZooKeeper) not to claim
    # leader
    FENCING = "fencing"
    FENCE_BACKOFF = "fence_backoff"
    PROMOTING = "promoting"
    ACTIVE = "active"
    HANDING_OFF = "handing_off"
    STORAGE_LOST = "storage_lost"
    SWITCHOVER_REFUSED = "switchover_refused"
    # operator
    MAINTENANCE = "maintenance"
    SHUTDOWN = "shutdown"


SAFETY_REASONS = frozenset(
    {Reason.NO_SESSION, Reason.LEASE_EXPIRED, Reason.SUPERSEDED, Reason.KEY_LOST, Reason.UNFENCED_SERVING}
)


class Blocker(Enum):
    """Why this agent could not take over automatically if the active failed right now."""

    NO_QUORUM = "zookeeper session not connected"
    MAINTENANCE = "maintenance mode is on"
    STORAGE_NOT_VISIBLE = "shared disks not visible on this controller"
    NOT_CONFIGURED = "target configuration not applied on this controller"
    FENCING_NOT_CONFIGURED = "no fencing method configured for the peer"
    SESSION_TIMEOUT_MISMATCH = "ZooKeeper granted a shorter session than timing.session_timeout_s"
    SWITCHOVER_PENDING = "a switchover to the peer is pending"
    PROMISED = "promised the active over the peer link not to claim while it serves without ZooKeeper"


@dataclass(frozen=True)
class Plan:
    reason: Reason
    role: Role
    actions: tuple[Action, ...] = ()
    lease_valid_until: float | None = None
    frozen: tuple[Action, ...] = ()  # what maintenance mode kept from running
    blockers: tuple[Blocker, ...] = ()
