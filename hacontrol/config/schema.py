"""The configuration as frozen typed objects. ``hacontrol.config.load`` builds them; nothing else does."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hacontrol.core.timing import Timing

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BACKENDS = ("lio", "tgt")
FENCE_POLICIES = ("first", "all")
KEY_LOST_ACTIONS = ("standby", "reboot")
RESERVATION_TYPES = {
    # name -> SPC-4 PERSISTENT RESERVE OUT type code
    "write_exclusive_registrants_only": 5,
    "write_exclusive_all_registrants": 7,
}


class Secret(str):
    """A string that never shows itself in repr, str() or logs; ``reveal()`` gets the value."""

    __slots__ = ()

    def reveal(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"


@dataclass(frozen=True)
class Chap:
    userid: str
    secret: Secret
    mutual_userid: str | None = None
    mutual_secret: Secret | None = None

    @property
    def mutual(self) -> bool:
        return self.mutual_userid is not None


@dataclass(frozen=True)
class Interface:
    name: str
    address: IPInterface


@dataclass(frozen=True)
class Portal:
    """A managed portal address whose home is one controller (port takeover moves it on failure)."""

    address: IPInterface
    interface: str


@dataclass(frozen=True)
class FenceMethod:
    method: str  # scsi_pr | ipmi | qmp | command
    timeout_s: float
    devices: tuple[str, ...] = ()  # scsi_pr
    host: str = ""  # ipmi
    port: int = 623
    username: str = ""
    password: Secret | None = None
    ipmi_interface: str = "lanplus"
    cipher_suite: int = 17  # ipmitool -C (17 is its default: RAKP-HMAC-SHA256, AES-CBC-128)
    socket: str = ""  # qmp
    argv: tuple[str, ...] = ()  # command

    @property
    def powers_off(self) -> bool:
        return self.method in ("ipmi", "qmp", "command")


@dataclass(frozen=True)
class Node:
    name: str
    id: int
    address: str
    interfaces: tuple[Interface, ...]
    portals: tuple[Portal, ...] = ()
    fencing: tuple[FenceMethod, ...] = ()
    peer_link: tuple[str, ...] = ()  # this controller's address on each peer-link path, in path order

    @property
    def powers_off(self) -> bool:
        """A method that can switch this controller off is configured (what the peer's fast takeover needs)."""
        return any(f.powers_off for f in self.fencing)

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)


@dataclass(frozen=True)
class Vip:
    address: IPInterface
    interface: str
    overrides: tuple[tuple[str, str], ...] = ()

    def interface_for(self, node: str) -> str:
        return dict(self.overrides).get(node, self.interface)


@dataclass(frozen=True)
class ZooKeeper:
    hosts: tuple[str, ...]
    chroot: str
    username: str | None = None
    password: Secret | None = None


@dataclass(frozen=True)
class Vaai:
    ats: bool = True  # COMPARE AND WRITE (emulate_caw)
    xcopy: bool = True  # EXTENDED COPY (emulate_3pc)
    unmap: bool = True  # UNMAP + LBP reporting (emulate_tpu), thin LUNs only
    write_same: bool = True  # WRITE SAME with UNMAP (emulate_tpws), thin LUNs only


@dataclass(frozen=True)
class Lun:
    id: int
    name: str
    device: str
    serial: str
    naa: str
    thin: bool = False
    write_cache: bool = False
    vaai: Vaai = field(default_factory=Vaai)
    capacity_warn_percent: int = 80


@dataclass(frozen=True)
class Acl:
    """Access for one initiator IQN, or (``chap_user``) for any initiator that logs in as that CHAP user."""

    initiator: str | None
    chap: Chap | None = None
    chap_user: str | None = None
    luns: tuple[int, ...] | None = None  # None: every LUN of the target


@dataclass(frozen=True)
class Target:
    iqn: str
    port: int = 3260
    chap: Chap | None = None
    allowed_networks: tuple[IPNetwork, ...] = ()
    luns: tuple[Lun, ...] = ()
    acls: tuple[Acl, ...] = ()


@dataclass(frozen=True)
class Fencing:
    policy: str = "first"
    on_key_lost: str = "standby"
    reservation_type: str = "write_exclusive_registrants_only"
    require_all_disks: bool = True
    standby_registers: bool = True


@dataclass(frozen=True)
class Network:
    garp_count: int = 3
    garp_interval_s: float = 0.05
    garp_refresh_s: float = 10.0
    dad_timeout_s: float = 0.2


@dataclass(frozen=True)
class PeerLink:
    """[peer_link]: the agents' direct heartbeats (the addresses are per node, ``node.peer_link``)."""

    key: Secret
    port: int = 7405
    fast_takeover: bool = True
    failsafe: bool = True


@dataclass(frozen=True)
class Config:
    cluster_name: str
    backend: str
    nodes: tuple[Node, Node]
    zookeeper: ZooKeeper
    timing: Timing = field(default_factory=Timing)
    vips: tuple[Vip, ...] = ()
    discovery_chap: Chap | None = None
    targets: tuple[Target, ...] = ()
    fencing: Fencing = field(default_factory=Fencing)
    network: Network = field(default_factory=Network)
    port_takeover: bool = True
    peer_link: PeerLink | None = None
    watchdog_device: str = "/dev/watchdog"
    metrics_listen: str = "127.0.0.1:9475"
    state_dir: str = "/var/lib/hacontrol"
    runtime_dir: str = "/run/hacontrol"  # the agent's status file for hactl status without ZooKeeper
    source: str = ""

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def peer_of(self, name: str) -> Node:
        self.node(name)
        return next(n for n in self.nodes if n.name != name)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)
