"""What LIO holds (``LioSnapshot``, read by ``snapshot.py``) and what the configuration wants (``Desired``,
built by ``desired.py``), as frozen values. ``plan.py`` turns the pair into steps.

Secrets are kept as :class:`hacontrol.config.schema.Secret` (its repr and str are ``***``), so a snapshot or a
plan can be printed or logged without leaking one. Attribute values are strings as configfs prints them.
Mapping fields are never mutated after construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hacontrol.config.schema import Secret

Attrs = Mapping[str, str]

NO_SECRET = Secret("")


@dataclass(frozen=True)
class Auth:
    """One CHAP block as LIO stores it (configfs ``auth/``): empty strings mean unset."""

    userid: str = ""
    secret: Secret = NO_SECRET
    mutual_userid: str = ""
    mutual_secret: Secret = NO_SECRET

    @property
    def empty(self) -> bool:
        return not (self.userid or self.secret or self.mutual_userid or self.mutual_secret)


NO_AUTH = Auth()


# --- what LIO holds ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupState:
    """An ALUA target port group of one storage object."""

    name: str
    id: int
    state: int
    attrs: Attrs = field(default_factory=dict)


@dataclass(frozen=True)
class SoState:
    """A storage object (backstore). ``hba`` is its configfs parent, e.g. ``iblock_3``."""

    name: str
    hba: str
    udev_path: str
    serial: str
    enabled: bool
    attrs: Attrs = field(default_factory=dict)
    groups: Mapping[str, GroupState] = field(default_factory=dict)
    lu_group: str = "default_lu_gp"

    @property
    def plugin(self) -> str:
        return self.hba.rpartition("_")[0]

    @property
    def key(self) -> str:
        """How a TPG LUN's symlink names it: ``iblock_3/hac-ds01``."""
        return f"{self.hba}/{self.name}"


@dataclass(frozen=True)
class MappedLunState:
    mapped_id: int
    tpg_lun: int
    write_protect: bool = False


@dataclass(frozen=True)
class AclState:
    initiator: str
    auth: Auth = NO_AUTH
    authentication: str = "-1"  # -1 inherit from the TPG, 0 no CHAP, 1 CHAP required
    mapped: Mapping[int, MappedLunState] = field(default_factory=dict)


@dataclass(frozen=True)
class TpgLunState:
    lun_id: int
    so_key: str  # hba/name of the storage object it exports ("" if the link could not be read)
    group: str  # ALUA target port group it belongs to


@dataclass(frozen=True)
class TpgState:
    tag: int
    enabled: bool
    rtpi: int | None  # None: this kernel has no per-TPG rtpi file
    attrs: Attrs = field(default_factory=dict)
    auth: Auth = NO_AUTH  # TPG-level CHAP (dynamic ACLs)
    portals: frozenset[str] = frozenset()  # np names, "10.0.0.1:3260"
    luns: Mapping[int, TpgLunState] = field(default_factory=dict)
    acls: Mapping[str, AclState] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetState:
    iqn: str
    tpgs: Mapping[int, TpgState] = field(default_factory=dict)


@dataclass(frozen=True)
class HostState:
    """Preconditions outside configfs proper."""

    dbroot: str = ""
    state_dirs: bool = False  # <dbroot>/pr and <dbroot>/alua exist (PR and ALUA metadata; see MACHINE.md)
    nonlocal_bind: bool = False  # ipv4 (and ipv6) ip_nonlocal_bind = 1
    iscsi_loaded: bool = True  # the iscsi fabric directory exists in configfs


@dataclass(frozen=True)
class LioSnapshot:
    host: HostState = HostState()
    discovery_enforce: bool = False
    discovery_auth: Auth = NO_AUTH
    lu_groups: Mapping[str, int] = field(default_factory=dict)
    storage: Mapping[str, SoState] = field(default_factory=dict)  # by storage object name
    targets: Mapping[str, TargetState] = field(default_factory=dict)  # by IQN

    def so_by_key(self) -> dict[str, SoState]:
        return {so.key: so for so in self.storage.values()}


# --- what the configuration wants --------------------------------------------------------------------------

@dataclass(frozen=True)
class DesiredGroup:
    name: str
    id: int
    attrs: Attrs


@dataclass(frozen=True)
class DesiredSo:
    name: str
    device: str
    serial: str
    attrs: Attrs  # written in order after creation (VAAI, thin provisioning, write cache)
    lun_name: str = ""


@dataclass(frozen=True)
class DesiredAcl:
    initiator: str
    auth: Auth  # NO_AUTH: no CHAP for this initiator
    mapped: tuple[int, ...]  # LUN ids it sees (mapped LUN id = TPG LUN id)

    @property
    def authentication(self) -> str:
        return "0" if self.auth.empty else "1"


@dataclass(frozen=True)
class DesiredTpg:
    tag: int
    role: str  # own | peer | discovery
    rtpi: int | None
    enabled: bool | None  # None: leave as it is (the peer's port: adopt/release decide)
    attrs: Attrs
    auth: Auth  # TPG-level CHAP for dynamic ACLs (chap_user / network-only access)
    portals: tuple[str, ...]
    luns: tuple[tuple[int, str, str], ...] = ()  # (lun id, storage object name, ALUA group name)
    acls: tuple[DesiredAcl, ...] = ()


@dataclass(frozen=True)
class DesiredTarget:
    iqn: str
    tpgs: tuple[DesiredTpg, ...]

    def tpg(self, role: str) -> DesiredTpg | None:
        return next((t for t in self.tpgs if t.role == role), None)


@dataclass(frozen=True)
class Desired:
    storage: tuple[DesiredSo, ...]
    groups: tuple[DesiredGroup, DesiredGroup]  # (own, peer)
    targets: tuple[DesiredTarget, ...]
    discovery: Auth  # NO_AUTH: discovery CHAP not enforced
    nonlocal_bind: bool  # portals on addresses this controller does not hold (peer's, VIPs)

    @property
    def own_group(self) -> DesiredGroup:
        return self.groups[0]

    @property
    def peer_group(self) -> DesiredGroup:
        return self.groups[1]

    def lun_count(self, role: str = "own") -> int:
        return sum(len(t.luns) for dt in self.targets if (t := dt.tpg(role)) is not None)
