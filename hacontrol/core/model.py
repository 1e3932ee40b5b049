"""What an agent knows at one instant: the frozen snapshot that ``decide`` reads.

Everything here is a value: enums and frozen dataclasses, built by
``hacontrol.agent.observe`` from the adapters once per tick. Times are
monotonic seconds of the observing agent's own clock (never wall time), so a
snapshot can be compared with the ``now`` passed to ``decide``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum


class SessionState(Enum):
    """The ZooKeeper session as this agent's client sees it.

    CONNECTED: the session is live and the last request proved it.
    SUSPENDED: the connection dropped; the session may or may not still exist
    on the servers. An agent must not assume it holds the lease.
    LOST: the session is gone (expired, closed, or never established). Any
    ephemeral znode it held has been deleted or soon will be.
    """

    CONNECTED = "connected"
    SUSPENDED = "suspended"
    LOST = "lost"


class AluaState(IntEnum):
    """Asymmetric access states as SPC-4 encodes them in REPORT TARGET PORT GROUPS."""

    ACTIVE_OPTIMIZED = 0
    ACTIVE_NON_OPTIMIZED = 1
    STANDBY = 2
    UNAVAILABLE = 3
    LBA_DEPENDENT = 4
    OFFLINE = 14
    TRANSITIONING = 15

    @property
    def accepts_io(self) -> bool:
        return self in (AluaState.ACTIVE_OPTIMIZED, AluaState.ACTIVE_NON_OPTIMIZED)

    @property
    def label(self) -> str:
        return _ALUA_LABELS[self]


_ALUA_LABELS = {
    AluaState.ACTIVE_OPTIMIZED: "active/optimized",
    AluaState.ACTIVE_NON_OPTIMIZED: "active/non-optimized",
    AluaState.STANDBY: "standby",
    AluaState.UNAVAILABLE: "unavailable",
    AluaState.LBA_DEPENDENT: "lba-dependent",
    AluaState.OFFLINE: "offline",
    AluaState.TRANSITIONING: "transitioning",
}


class Role(Enum):
    """What an agent is doing, derived by ``decide`` and published for operators."""

    STARTING = "starting"  # no session yet: serves nothing, claims nothing
    STANDBY = "standby"
    CANDIDATE = "candidate"  # leader znode free: claiming it
    PROMOTING = "promoting"  # holds leadership, takeover steps in progress
    ACTIVE = "active"
    DEMOTING = "demoting"


@dataclass(frozen=True)
class Leader:
    """The leader znode: who holds it, under which epoch, and whether our session owns it."""

    node: str
    epoch: int
    ours: bool


@dataclass(frozen=True)
class PeerReport:
    """The peer's member znode (ephemeral: present only while the peer's session lives)."""

    node: str
    role: Role
    own_alua: AluaState | None
    vips: frozenset[str] = frozenset()
    ready: bool = False  # storage visible, target configured, standby path healthy
    epoch_seen: int = 0
    handed_off: str | None = None  # switchover id this peer released leadership for
    hosts_peer_ports: bool = False  # it hosts *our* portal addresses (port takeover)
    maintenance_seen: bool = False
    reason: str = ""  # the reason of its last plan (Reason value)
    blockers: tuple[str, ...] = ()  # why it could not take over now (Blocker values)
    frozen: tuple[str, ...] = ()  # what maintenance mode kept it from doing


@dataclass(frozen=True)
class SwitchoverIntent:
    """An operator's request to move the active role to ``target`` before ``deadline``.

    ``deadline`` is already converted to this agent's monotonic clock by the
    adapter (the znode carries a duration, and the adapter records when it
    first saw it).
    """

    intent_id: str
    target: str
    deadline: float
    state: str = "pending"  # pending | refused | done


@dataclass(frozen=True)
class Maintenance:
    enabled: bool
    reason: str = ""
    by: str = ""


@dataclass(frozen=True)
class Coordination:
    """What ZooKeeper said, as of the last successful read."""

    session: SessionState
    lease_confirmed_at: float | None  # send time of the last round trip that proved our session alive
    leader: Leader | None
    epoch: int  # the persistent epoch counter (the fencing token source)
    peer: PeerReport | None  # None: the peer has no live session
    switchover: SwitchoverIntent | None = None
    maintenance: Maintenance = Maintenance(enabled=False)
    published: PeerReport | None = None  # our own member znode as last written
    granted_timeout_s: float | None = None  # the session timeout the servers granted (None: unknown)
    connected_since: float | None = None  # when this agent process first reached ZooKeeper
    peer_seen: bool = True  # this agent process has seen the peer's member znode at least once
    # When this agent last saw the peer's alive znode change (the leader rewrites it every tick): the leader's
    # heartbeat through ZooKeeper, which a fast takeover also requires to have stopped. None: never seen.
    peer_alive_at: float | None = None


@dataclass(frozen=True)
class FenceRecord:
    """Outcome of the last FencePeer this agent executed."""

    epoch: int
    ok: bool
    at: float
    power_confirmed: bool = False  # a power method confirmed the peer off
    detail: str = ""


@dataclass(frozen=True)
class Storage:
    """Shared disks as the fencing adapter last read them.

    With SCSI persistent reservations configured, ``my_key_epoch`` is the
    epoch encoded in our registration if it is present on *every* shared disk,
    ``holder`` is the (node name, epoch) of the reservation holder if all disks
    agree, and ``stale_peer_key`` says a peer key older than the current
    epoch is still registered somewhere.
    """

    pr: bool
    visible: bool = True
    my_key_epoch: int | None = None
    holder: tuple[str, int] | None = None
    stale_peer_key: bool = False
    last_fence: FenceRecord | None = None
    invisible_since: float | None = None  # when the disks stopped answering (None while visible)


@dataclass(frozen=True)
class DataPath:
    """The target and the addresses on this controller."""

    configured: bool  # the target model is applied here
    own_group: AluaState | None  # None on backends without ALUA (tgt: VIP-only)
    peer_group: AluaState | None  # how this controller presents the peer's group
    alua_changed_at: float | None = None  # when own_group last changed (for settling)
    vips: frozenset[str] = frozenset()
    own_ports_up: bool = True  # this controller's own portal addresses are present
    peer_ports_hosted: bool = False  # we host the peer's portal addresses and target port
    announced_at: float | None = None  # when our held VIPs were last announced (GARP / unsolicited NA)
    # The initiators' own persistent reservations (LIO; None/False where the backend keeps none of its own):
    # the epoch under which this controller last loaded what the active before it published, and whether its
    # LIO's reservations changed since this controller last published them to ZooKeeper.
    pr_loaded_epoch: int | None = None
    pr_unpublished: bool = False

    @property
    def serving(self) -> bool:
        """True while anything here could still accept I/O from an initiator."""
        if self.own_group is not None and self.own_group.accepts_io:
            return True
        if self.peer_ports_hosted:
            return True
        return bool(self.vips)


@dataclass(frozen=True)
class PeerLinkView:
    """The direct peer link (authenticated UDP heartbeats on every configured path), as last heard here.

    ``heard`` holds, per path, when this agent last accepted a heartbeat from the peer there (None: never).
    ``leading_epoch`` is the epoch under which the peer last said it leads (0: never heard it lead).
    ``promise_confirmed_at`` is the *send* time of our newest heartbeat that the peer answered with a promise
    not to claim or fence (it plays for the failsafe the part ``lease_confirmed_at`` plays for ZooKeeper: the
    peer promised ``session_timeout_s`` from a moment no earlier than this one). ``promised_until`` is how long
    we ourselves promised the peer not to claim or fence.
    """

    heard: tuple[float | None, ...] = ()
    peer_role: Role | None = None
    peer_epoch: int = 0
    peer_serving: bool = False
    leading_epoch: int = 0
    promise_confirmed_at: float | None = None
    promised_until: float | None = None
    # Since when our own end of the link has listened without a stall (our process starved or frozen for
    # longer than a few heartbeats restarts it): silence before that proves nothing about the peer.
    listening_since: float | None = None

    @property
    def configured(self) -> bool:
        return bool(self.heard)

    @property
    def last_heard(self) -> float | None:
        times = [t for t in self.heard if t is not None]
        return max(times) if times else None

    def paths_alive(self, now: float, dead_after_s: float) -> int:
        return sum(1 for t in self.heard if t is not None and now - t < dead_after_s)


@dataclass(frozen=True)
class Spec:
    """The static part of the configuration that decisions depend on."""

    node: str
    peer: str
    vips: frozenset[str]
    alua: bool = True  # False: VIP-only failover (tgt backend)
    fencing_configured: bool = True
    power_fencing: bool = False
    port_takeover: bool = False
    own_portals: bool = False  # managed [[node.portal]] addresses: brought up at home with or without takeover
    standby_registers: bool = True
    on_key_lost: str = "standby"  # standby | reboot
    announce_every_s: float = 0.0  # periodic re-announcement of held VIPs (0: only when claimed)
    fast_takeover: bool = False  # peer link: power off a silent active and take over before its session expires
    failsafe: bool = False  # peer link: an active without ZooKeeper keeps serving while the peer promises


@dataclass(frozen=True)
class Observation:
    """One frozen snapshot of everything an agent may base a decision on."""

    spec: Spec
    coord: Coordination
    storage: Storage
    datapath: DataPath
    watchdog_armed: bool = False
    link: PeerLinkView = PeerLinkView()

    @property
    def node(self) -> str:
        return self.spec.node

    @property
    def peer(self) -> str:
        return self.spec.peer
