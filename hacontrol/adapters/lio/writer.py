"""Carry out plan ops on the running kernel: rtslib-fb for LIO's objects, direct configfs writes for the rest.

rtslib-fb creates targets, TPGs, portals, LUNs and ACLs. Plain configfs writes do what it has no API for:
the relative target port id (``tpgt_N/rtpi``, unknown to rtslib-fb 2.1.76), the LU group, ALUA group
attributes and states, CHAP and attributes. Direct configfs is also used where rtslib-fb was **measured too
slow** for 1,024 LUNs in the rig (docs/lio.md): creating block storage objects (10 ms each: pyudev and a new
RTSRoot per object), mapped LUNs (3.3 ms each through rtslib's lookups, 2,048 of them), and deleting storage
objects and whole targets (rtslib scans every LUN of every target for each storage object it deletes).

**RCU.** Attaching a LUN to a TPG or to an ALUA group waits for an RCU grace period in the kernel (~12 ms on
the rig's controllers, 0.2 ms expedited): a large apply runs with ``/sys/kernel/rcu_expedited`` set and then
puts back the value it found (:meth:`RtslibWriter.batch`).

No rtslib object leaves this module, and no secret value reaches an exception or a log line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from hacontrol.agent.protocols import AdapterError

from . import names
from .model import Auth, LioSnapshot
from .plan import Op
from .reservations import APTPL_PREFIX, aptpl_dir
from .snapshot import CONFIGFS, PROC_SYS

log = structlog.get_logger("hacontrol.lio")

_AUTH_FILES = ("userid", "password", "userid_mutual", "password_mutual")
RCU_EXPEDITED = "/sys/kernel/rcu_expedited"
BATCH_STEPS = 64  # an apply with at least this many steps expedites RCU grace periods


class OpFailed(AdapterError):
    """One op could not be carried out; the message names the op (never a secret) and the kernel's reason."""


def _auth_values(a: Auth) -> tuple[str, str, str, str]:
    return (a.userid, a.secret.reveal() if a.secret else "", a.mutual_userid,
            a.mutual_secret.reveal() if a.mutual_secret else "")


class RtslibWriter:
    """The production writer. ``known(snapshot)`` tells it where existing storage objects live (their HBA)."""

    def __init__(self, root: str | Path = CONFIGFS, proc: str | Path = PROC_SYS):
        self.root = Path(root)
        self.proc = Path(proc)
        self._hba: dict[str, str] = {}
        self._rtslib: Any = None

    @contextlib.contextmanager
    def batch(self, steps: int, rcu_path: str = RCU_EXPEDITED) -> Iterator[None]:
        """Expedite RCU grace periods for a large apply; restore the previous setting afterwards."""
        before = _read(rcu_path) if steps >= BATCH_STEPS else ""
        changed = False
        if before == "0":
            with contextlib.suppress(OSError):
                _write(rcu_path, "1")
                changed = True
        try:
            yield
        finally:
            if changed:
                with contextlib.suppress(OSError):
                    _write(rcu_path, before)

    def known(self, snap: LioSnapshot) -> None:
        self._hba = {name: so.hba for name, so in snap.storage.items()}
        if self._rtslib is not None:
            # rtslib caches backstore indexes per process; anything changed outside makes it lie.
            self._rtslib.tcm.bs_cache.clear()

    def run(self, op: Op) -> None:
        handler: Callable[..., None] | None = getattr(self, f"_{op.kind}", None)
        if handler is None:
            raise OpFailed(f"{op.kind}: no such operation")
        try:
            handler(*op.args)
        except OpFailed:
            raise
        except Exception as exc:  # rtslib raises RTSLibError/OSError/ValueError; name the op, never a value
            raise OpFailed(f"{op}: {_reason(exc)}") from None

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _lib(self) -> Any:
        if self._rtslib is None:
            import rtslib_fb  # imported here: only controllers have it, and its import touches the kernel
            import rtslib_fb.tcm  # bs_cache lives there

            self._rtslib = rtslib_fb
        return self._rtslib

    def _write(self, path: Path | str, value: str) -> None:
        _write(path, value)

    def _so_path(self, name: str) -> Path:
        hba = self._hba.get(name)
        if hba is None:
            matches = sorted((self.root / "core").glob(f"*_*/{name}"))
            if not matches:
                raise OpFailed(f"storage object {name} not found")
            hba = matches[0].parent.name
            self._hba[name] = hba
        return self.root / "core" / hba / name

    def _so(self, name: str) -> Any:
        lib = self._lib()
        hba = self._so_path(name).parent.name
        return lib.BlockStorageObject(name, index=int(hba.rpartition("_")[2]))

    def _tpg_path(self, iqn: str, tag: int) -> Path:
        return self.root / "iscsi" / iqn / f"tpgt_{tag}"

    def _tpg(self, iqn: str, tag: int) -> Any:
        lib = self._lib()
        return lib.TPG(lib.Target(lib.FabricModule("iscsi"), iqn, mode="lookup"), tag, mode="lookup")

    def _write_auth(self, path: Path, auth: Auth) -> None:
        """LIO clears a credential only when told "NULL" (an empty write leaves its "set" flag, and with it
        mutual CHAP, in place)."""
        for fname, value in zip(_AUTH_FILES, _auth_values(auth), strict=True):
            try:
                self._write(path / fname, value or "NULL")
            except OSError as exc:
                raise OpFailed(f"writing {path / fname}: {exc.strerror}") from None

    # -- host ---------------------------------------------------------------------------------------------------

    def _state_dirs(self, dbroot: str) -> None:
        base = dbroot or (self.root / "dbroot").read_text().strip()
        for sub in ("pr", "alua"):
            os.makedirs(os.path.join(base, sub), mode=0o700, exist_ok=True)

    def _nonlocal_bind(self) -> None:
        self._write(self.proc / "net/ipv4/ip_nonlocal_bind", "1")
        with contextlib.suppress(FileNotFoundError):  # a kernel without IPv6
            self._write(self.proc / "net/ipv6/ip_nonlocal_bind", "1")

    def _create_lu_group(self, name: str, gid: int) -> None:
        path = self.root / "core" / "alua" / "lu_gps" / name
        path.mkdir()
        self._write(path / "lu_gp_id", str(gid))

    def _delete_lu_group(self, name: str) -> None:
        (self.root / "core" / "alua" / "lu_gps" / name).rmdir()

    # -- storage objects and ALUA groups -----------------------------------------------------------------------

    def _create_so(self, name: str, device: str, serial: str) -> None:
        """A block backstore, as rtslib-fb's BlockStorageObject makes one, without its per-call costs (pyudev,
        a fresh RTSRoot for the PR directory: 10 ms each, 10 s for 1,024 LUNs). The device checks are
        ``desired.host_problems`` (before anything changes) and the kernel's exclusive open on enable (a device
        in use fails with EBUSY)."""
        hba = self._free_hba()
        path = self.root / "core" / hba / name
        os.makedirs(path)
        try:
            _write(path / "control", f"udev_path={device}")
            _write(path / "udev_path", device)
            _write(path / "control", "readonly=0")
            _write(path / "enable", "1")
            _write(path / "wwn" / "vpd_unit_serial", serial)
            self._forget_aptpl(serial)
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(path)
                os.rmdir(path.parent)
            raise
        self._hba[name] = hba

    def _free_hba(self) -> str:
        used = {int(d.rpartition("_")[2]) for d in _subdirs(self.root / "core") if d.startswith("iblock_")}
        index = next(i for i in range(len(used) + 1) if i not in used)
        return f"iblock_{index}"

    def _forget_aptpl(self, serial: str) -> None:
        """An APTPL file an earlier life of this storage object left here describes an older state: LIO's copy
        starts empty, and the reservations come from ZooKeeper when this controller takes over (prsync.py).
        Unlike rtslib-fb, the file is not loaded; it is removed, so that it shows what LIO holds. Where no agent
        serves the directory (prstore.py: the read-only base, or a dead agent's mount) there is nothing to
        remove, and LIO could not write there either."""
        try:
            os.unlink(aptpl_dir(self.root) / f"{APTPL_PREFIX}{serial}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("lio_aptpl_not_removed", serial=serial, error=exc.strerror)

    def _delete_so(self, name: str) -> None:
        """The plan unexports it first; the kernel refuses (EBUSY) if a LUN still uses it."""
        path = self._so_path(name)
        for group in _subdirs(path / "alua"):
            if group != "default_tg_pt_gp":
                os.rmdir(path / "alua" / group)
        os.rmdir(path)
        with contextlib.suppress(OSError):  # the HBA rtslib created for it, if now empty
            os.rmdir(path.parent)
        self._hba.pop(name, None)

    def _set_so_attr(self, name: str, attr: str, value: str) -> None:
        self._write(self._so_path(name) / "attrib" / attr, value)

    def _create_group(self, so: str, group: str, gid: int) -> None:
        path = self._so_path(so) / "alua" / group
        path.mkdir()
        self._write(path / "tg_pt_gp_id", str(gid))

    def _delete_group(self, so: str, group: str) -> None:
        (self._so_path(so) / "alua" / group).rmdir()

    def _set_group_attr(self, so: str, group: str, attr: str, value: str) -> None:
        self._write(self._so_path(so) / "alua" / group / attr, value)

    def _set_group_state(self, so: str, group: str, state: int) -> None:
        self._write(self._so_path(so) / "alua" / group / "alua_access_state", str(state))

    def _set_lu_group(self, so: str, group: str) -> None:
        self._write(self._so_path(so) / "alua_lu_gp", group)

    # -- targets -------------------------------------------------------------------------------------------------

    def _create_target(self, iqn: str) -> None:
        lib = self._lib()
        lib.Target(lib.FabricModule("iscsi"), iqn, mode="create")

    def _delete_target(self, iqn: str) -> None:
        base = self.root / "iscsi" / iqn
        for tpg in _subdirs(base):
            if tpg.startswith("tpgt_"):
                self._delete_tpg(iqn, int(tpg[5:]))
        os.rmdir(base)

    def _create_tpg(self, iqn: str, tag: int) -> None:
        lib = self._lib()
        lib.TPG(lib.Target(lib.FabricModule("iscsi"), iqn, mode="lookup"), tag, mode="create")

    def _delete_tpg(self, iqn: str, tag: int) -> None:
        tpg = self._tpg_path(iqn, tag)
        if _read(tpg / "enable") == "1":
            _write(tpg / "enable", "0")  # closes its sessions
        for acl in _subdirs(tpg / "acls"):
            for mapped in _subdirs(tpg / "acls" / acl):
                if mapped.startswith("lun_"):
                    _remove_linked_dir(tpg / "acls" / acl / mapped)
            os.rmdir(tpg / "acls" / acl)
        for lun in _subdirs(tpg / "lun"):
            _remove_linked_dir(tpg / "lun" / lun)
        for np in _subdirs(tpg / "np"):
            os.rmdir(tpg / "np" / np)
        os.rmdir(tpg)

    def _set_tpg_enable(self, iqn: str, tag: int, enabled: bool) -> None:
        self._write(self._tpg_path(iqn, tag) / "enable", "1" if enabled else "0")

    def _set_tpg_rtpi(self, iqn: str, tag: int, rtpi: int | None) -> None:
        if rtpi is None:
            return
        path = self._tpg_path(iqn, tag) / "rtpi"
        if not path.exists():
            raise OpFailed(f"TPG {tag} of {iqn}: this kernel has no per-TPG relative port id (tpgt_N/rtpi); "
                           "both controllers would report port 1: run a kernel >= 6.x (Debian trixie)")
        self._write(path, str(rtpi))

    def _set_tpg_attr(self, iqn: str, tag: int, attr: str, value: str) -> None:
        self._write(self._tpg_path(iqn, tag) / "attrib" / attr, value)

    def _set_tpg_auth(self, iqn: str, tag: int, auth: Auth) -> None:
        self._write_auth(self._tpg_path(iqn, tag) / "auth", auth)

    def _create_portal(self, iqn: str, tag: int, np: str) -> None:
        address, port = names.split_portal(np)
        self._lib().NetworkPortal(self._tpg(iqn, tag), address, port, mode="create")

    def _delete_portal(self, iqn: str, tag: int, np: str) -> None:
        address, port = names.split_portal(np)
        self._lib().NetworkPortal(self._tpg(iqn, tag), address, port, mode="lookup").delete()

    def _create_lun(self, iqn: str, tag: int, lun_id: int, so: str) -> None:
        self._lib().LUN(self._tpg(iqn, tag), lun_id, self._so(so))

    def _delete_lun(self, iqn: str, tag: int, lun_id: int) -> None:
        """Its mapped LUNs first (the kernel keeps a LUN that an ACL still maps)."""
        tpg = self._tpg_path(iqn, tag)
        for acl in _subdirs(tpg / "acls"):
            for mapped in _subdirs(tpg / "acls" / acl):
                path = tpg / "acls" / acl / mapped
                if mapped.startswith("lun_") and _links_to(path, f"lun_{lun_id}"):
                    _remove_linked_dir(path)
        _remove_linked_dir(tpg / "lun" / f"lun_{lun_id}")

    def _set_lun_group(self, iqn: str, tag: int, lun_id: int, group: str) -> None:
        self._write(self._tpg_path(iqn, tag) / "lun" / f"lun_{lun_id}" / "alua_tg_pt_gp", group)

    def _create_acl(self, iqn: str, tag: int, initiator: str) -> None:
        self._lib().NodeACL(self._tpg(iqn, tag), initiator, mode="create")

    def _delete_acl(self, iqn: str, tag: int, initiator: str) -> None:
        self._lib().NodeACL(self._tpg(iqn, tag), initiator, mode="lookup").delete()

    def _set_acl_auth(self, iqn: str, tag: int, initiator: str, auth: Auth) -> None:
        self._write_auth(self._tpg_path(iqn, tag) / "acls" / initiator / "auth", auth)

    def _set_acl_attr(self, iqn: str, tag: int, initiator: str, attr: str, value: str) -> None:
        self._write(self._tpg_path(iqn, tag) / "acls" / initiator / "attrib" / attr, value)

    def _create_mapped_lun(self, iqn: str, tag: int, initiator: str, mapped: int, tpg_lun: int) -> None:
        tpg = self._tpg_path(iqn, tag)
        target = tpg / "lun" / f"lun_{tpg_lun}"
        if not target.is_dir():
            raise OpFailed(f"TPG {tag} of {iqn} has no LUN {tpg_lun} to map")
        path = tpg / "acls" / initiator / f"lun_{mapped}"
        os.mkdir(path)
        try:
            os.symlink(target, path / f"hac_{tag}_{tpg_lun}")
        except OSError:
            os.rmdir(path)
            raise

    def _delete_mapped_lun(self, iqn: str, tag: int, initiator: str, mapped: int) -> None:
        _remove_linked_dir(self._tpg_path(iqn, tag) / "acls" / initiator / f"lun_{mapped}")

    # -- discovery -----------------------------------------------------------------------------------------------

    def _set_discovery_auth(self, auth: Auth) -> None:
        (self.root / "iscsi").mkdir(exist_ok=True)  # loads the iSCSI fabric if no target did yet
        self._write_auth(self.root / "iscsi" / "discovery_auth", auth)

    def _set_discovery_enforce(self, enforce: bool) -> None:
        self._write(self.root / "iscsi" / "discovery_auth" / "enforce_discovery_auth", "1" if enforce else "0")


def _read(path: Path | str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        return os.read(fd, 4096).decode(errors="replace").strip()
    finally:
        os.close(fd)


def _write(path: Path | str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # configfs ignores the truncation; plain files (tests) need it
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _subdirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _links_to(path: Path, name: str) -> bool:
    return any(e.is_symlink() and os.readlink(e.path).rstrip("/").endswith("/" + name) for e in os.scandir(path))


def _remove_linked_dir(path: Path) -> None:
    """A LUN or mapped LUN directory: unlink its symlink(s), then remove it."""
    for entry in os.scandir(path):
        if entry.is_symlink():
            os.unlink(entry.path)
    os.rmdir(path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}" + (f" ({exc.filename})" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"
