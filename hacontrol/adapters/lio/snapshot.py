"""Read LIO's configfs tree into a frozen :class:`LioSnapshot` (reads only; nothing is created or changed).

Direct file reads rather than rtslib-fb objects: rtslib's constructors check existence and, for some classes,
load kernel modules, and this read runs on a live controller (for 1,024 LUNs it is ~40,000 small reads, see
docs/lio.md). ``root`` and ``proc`` are parameters so tests can point the reader at a captured tree.

Only what the adapter compares is read: the attributes listed in ``SO_ATTRS``, ``GROUP_ATTRS`` and
``TPG_ATTRS``; storage objects it does not own are read just far enough to see which device they hold.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hacontrol.config.schema import Secret

from . import names
from .desired import group_attrs
from .model import (
    AclState,
    Auth,
    GroupState,
    HostState,
    LioSnapshot,
    MappedLunState,
    SoState,
    TargetState,
    TpgLunState,
    TpgState,
)

CONFIGFS = "/sys/kernel/config/target"
PROC_SYS = "/proc/sys"
SO_ATTRS = ("emulate_caw", "emulate_3pc", "emulate_tpu", "emulate_tpws", "emulate_rsoc", "emulate_model_alias",
            "max_unmap_lba_count", "force_pr_aptpl")
GROUP_ATTRS = tuple(group_attrs())
TPG_ATTRS = ("generate_node_acls", "cache_dynamic_acls", "demo_mode_write_protect", "prod_mode_write_protect",
             "authentication", "tpg_enabled_sendtargets")
_AUTH_FILES = ("userid", "password", "userid_mutual", "password_mutual")
_NOT_SO = ("hba_info", "hba_mode")
# alua_access_type is written as a number but read back as text.
_ACCESS_TYPES = {"None": "0", "Implicit": "1", "Explicit": "2", "Implicit and Explicit": "3"}


def read_text(path: str | Path) -> str:
    """A configfs attribute's value, stripped ("" when missing). os-level IO: pathlib and buffered files cost
    more than the read itself here, and a snapshot of 1,024 LUNs is ~40,000 reads."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        return os.read(fd, 8192).decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _field(text: str, label: str) -> str:
    """The value after ``label:`` in LIO's multi-line info files."""
    for line in text.splitlines():
        head, sep, value = line.partition(":")
        if sep and head.strip() == label:
            return value.strip()
    return ""


def _int(text: str, default: int = -1) -> int:
    try:
        return int(text, 0)
    except ValueError:
        return default


def _dirs(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _link_tail(path: str, parts: int) -> str:
    """The last ``parts`` components of the first symlink in ``path`` ("" if there is none)."""
    try:
        for e in os.scandir(path):
            if e.is_symlink():
                return "/".join(os.readlink(e.path).rstrip("/").split("/")[-parts:])
    except OSError:
        pass
    return ""


def _attrs(path: str, wanted: Iterable[str]) -> dict[str, str]:
    """Attributes that exist (a missing file reads as "" and is left out only if it really is missing)."""
    out = {}
    for name in wanted:
        value = read_text(f"{path}/{name}")
        if value != "" or os.path.exists(f"{path}/{name}"):
            out[name] = value
    return out


def _auth(path: str) -> Auth:
    """"NULL" is how LIO shows a cleared credential."""
    userid, password, muser, mpassword = ("" if v == "NULL" else v for v in
                                          (read_text(f"{path}/{f}") for f in _AUTH_FILES))
    return Auth(userid, Secret(password), muser, Secret(mpassword))


class Reader:
    def __init__(self, root: str | Path = CONFIGFS, proc: str | Path = PROC_SYS):
        self.root = str(root)
        self.proc = str(proc)

    def snapshot(self) -> LioSnapshot:
        disc = f"{self.root}/iscsi/discovery_auth"
        return LioSnapshot(host=self.host(), discovery_enforce=read_text(f"{disc}/enforce_discovery_auth") == "1",
                           discovery_auth=_auth(disc), lu_groups=self.lu_groups(), storage=self.storage(),
                           targets=self.targets())

    def host(self) -> HostState:
        dbroot = read_text(f"{self.root}/dbroot")
        dirs = bool(dbroot) and all(os.path.isdir(os.path.join(dbroot, d)) for d in ("pr", "alua"))
        v4 = read_text(f"{self.proc}/net/ipv4/ip_nonlocal_bind") == "1"
        v6_path = f"{self.proc}/net/ipv6/ip_nonlocal_bind"
        v6 = read_text(v6_path) == "1" or not os.path.exists(v6_path)
        return HostState(dbroot=dbroot, state_dirs=dirs, nonlocal_bind=v4 and v6,
                         iscsi_loaded=os.path.isdir(f"{self.root}/iscsi"))

    def lu_groups(self) -> dict[str, int]:
        base = f"{self.root}/core/alua/lu_gps"
        return {name: _int(read_text(f"{base}/{name}/lu_gp_id")) for name in _dirs(base)}

    def storage(self) -> dict[str, SoState]:
        out: dict[str, SoState] = {}
        core = f"{self.root}/core"
        for hba in _dirs(core):
            if hba == "alua" or "_" not in hba:
                continue
            for name in _dirs(f"{core}/{hba}"):
                if name not in _NOT_SO:
                    out[name] = self.storage_object(f"{core}/{hba}/{name}", hba, name)
        return out

    def storage_object(self, path: str, hba: str, name: str) -> SoState:
        udev = read_text(f"{path}/udev_path")
        if not names.owned_so(name):
            return SoState(name=name, hba=hba, udev_path=udev, serial="", enabled=True)
        groups = {}
        for gname in _dirs(f"{path}/alua"):
            if gname == "default_tg_pt_gp":
                continue  # the kernel's own group: never ours, never compared
            g = f"{path}/alua/{gname}"
            attrs = _attrs(g, GROUP_ATTRS)
            if "alua_access_type" in attrs:
                attrs["alua_access_type"] = _ACCESS_TYPES.get(attrs["alua_access_type"], attrs["alua_access_type"])
            groups[gname] = GroupState(gname, _int(read_text(f"{g}/tg_pt_gp_id")),
                                       _int(read_text(f"{g}/alua_access_state")), attrs)
        return SoState(name=name, hba=hba, udev_path=udev,
                       serial=_field(read_text(f"{path}/wwn/vpd_unit_serial"), "T10 VPD Unit Serial Number"),
                       enabled=read_text(f"{path}/enable") == "1", attrs=_attrs(f"{path}/attrib", SO_ATTRS),
                       groups=groups, lu_group=_field(read_text(f"{path}/alua_lu_gp"), "LU Group Alias"))

    def targets(self) -> dict[str, TargetState]:
        base = f"{self.root}/iscsi"
        out = {}
        for iqn in _dirs(base):
            if iqn == "discovery_auth":
                continue
            tpgs = {int(d[5:]): self.tpg(f"{base}/{iqn}/{d}", int(d[5:]))
                    for d in _dirs(f"{base}/{iqn}") if d.startswith("tpgt_")}
            out[iqn] = TargetState(iqn, tpgs)
        return out

    def tpg(self, path: str, tag: int) -> TpgState:
        rtpi_text = read_text(f"{path}/rtpi") if os.path.exists(f"{path}/rtpi") else None
        luns = {}
        for d in _dirs(f"{path}/lun"):
            if d.startswith("lun_"):
                group = _field(read_text(f"{path}/lun/{d}/alua_tg_pt_gp"), "TG Port Alias")
                luns[int(d[4:])] = TpgLunState(int(d[4:]), _link_tail(f"{path}/lun/{d}", 2), group)
        acls = {ini: self.acl(f"{path}/acls/{ini}", ini) for ini in _dirs(f"{path}/acls")}
        return TpgState(tag=tag, enabled=read_text(f"{path}/enable") == "1",
                        rtpi=None if rtpi_text is None else _int(rtpi_text, 0),
                        attrs=_attrs(f"{path}/attrib", TPG_ATTRS), auth=_auth(f"{path}/auth"),
                        portals=frozenset(_dirs(f"{path}/np")), luns=luns, acls=acls)

    def acl(self, path: str, initiator: str) -> AclState:
        mapped = {}
        for d in _dirs(path):
            if d.startswith("lun_"):
                tail = _link_tail(f"{path}/{d}", 1)
                mapped[int(d[4:])] = MappedLunState(int(d[4:]), _int(tail[4:]) if tail.startswith("lun_") else -1,
                                                    read_text(f"{path}/{d}/write_protect") == "1")
        return AclState(initiator=initiator, auth=_auth(f"{path}/auth"),
                        authentication=read_text(f"{path}/attrib/authentication") or "-1", mapped=mapped)


def read_snapshot(root: str | Path = CONFIGFS, proc: str | Path = PROC_SYS) -> LioSnapshot:
    return Reader(root, proc).snapshot()
