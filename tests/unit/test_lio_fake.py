"""A directory tree that behaves like LIO's configfs for the adapter: the writer's ops materialise the files the
kernel would create, the snapshot reader reads them back, and the refusals that matter are the kernel's
(relative port id on an enabled TPG, deleting a backstore still exported, an existing object).

Also the shared builders of the LIO unit tests (a two-node configuration in TOML, block-device stand-ins).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from hacontrol.adapters.lio.desired import GROUP_DEFAULTS, SO_DEFAULTS
from hacontrol.adapters.lio.model import LioSnapshot
from hacontrol.adapters.lio.plan import Op
from hacontrol.adapters.lio.snapshot import SO_ATTRS, TPG_ATTRS, Reader
from hacontrol.adapters.lio.writer import OpFailed, RtslibWriter
from hacontrol.config import loads
from hacontrol.config.schema import Config

IQN = "iqn.2026-11.com.example:array1"
ESX, HOST = "iqn.1998-01.com.vmware:esx01-1a2b3c4d", "iqn.2026-11.com.example:host2"
SN = ["6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7", "0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e", "a1b2c3d4e5f60718293a4b5c6d7e8f90"]
SECRETS = ("Array1-Chap-01", "Array1-Mutual-1", "Esx01-Chap-Key1", "Esx01-Mutual-K1", "disc0very-Secr3t")


def _touch(path: Path, value: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)


class FakeLio(RtslibWriter):
    """The production writer's direct configfs ops on a plain tree, plus fakes of what rtslib and the kernel do.

    ``fail`` decides, per op, whether it fails (EIO) before touching anything; ``ops`` records every op run.
    """

    def __init__(self, root: Path, fail: Callable[[Op], bool] | None = None):
        super().__init__(root / "target", root / "proc")
        self.base = root
        self.fail = fail or (lambda op: False)
        self.ops: list[Op] = []
        for sub in ("core/alua/lu_gps/default_lu_gp", "iscsi/discovery_auth"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _touch(self.root / "core/alua/lu_gps/default_lu_gp/lu_gp_id", "0")
        _touch(self.root / "dbroot", str(root / "dbroot"))
        for f in ("enforce_discovery_auth", "userid", "password", "userid_mutual", "password_mutual"):
            _touch(self.root / "iscsi/discovery_auth" / f, "0" if f.startswith("enforce") else "")
        for family in ("ipv4", "ipv6"):
            _touch(self.proc / f"net/{family}/ip_nonlocal_bind", "0")

    def snapshot(self) -> LioSnapshot:
        return Reader(self.root, self.proc).snapshot()

    def run(self, op: Op) -> None:
        self.ops.append(op)
        if self.fail(op):
            raise OpFailed(f"{op}: Input/output error (injected)")
        super().run(op)

    # -- what rtslib-fb and the kernel do, on a plain tree ------------------------------------------------

    def _create_so(self, name: str, device: str, serial: str) -> None:
        if not os.path.exists(device):
            raise OSError(errno.ENOENT, "No such device", device)
        index = 0
        while (self.root / "core" / f"iblock_{index}").exists():
            index += 1
        path = self.root / "core" / f"iblock_{index}" / name
        path.mkdir(parents=True)
        _touch(path / "udev_path", device)
        _touch(path / "enable", "1")
        _touch(path / "wwn" / "vpd_unit_serial", f"T10 VPD Unit Serial Number: {serial}")
        _touch(path / "alua_lu_gp", "LU Group Alias: default_lu_gp\nLU Group ID: 0")
        _touch(path / "pr" / "res_aptpl_metadata")
        for attr in SO_ATTRS:
            _touch(path / "attrib" / attr, SO_DEFAULTS.get(attr, "0"))
        self._create_group_files(path / "alua" / "default_tg_pt_gp", 0)
        self._hba[name] = f"iblock_{index}"

    def _create_group_files(self, path: Path, gid: int) -> None:
        path.mkdir(parents=True)
        _touch(path / "tg_pt_gp_id", str(gid))
        _touch(path / "alua_access_state", "0")
        for attr, value in GROUP_DEFAULTS.items():
            _touch(path / attr, "Implicit and Explicit" if attr == "alua_access_type" else value)

    def _create_group(self, so: str, group: str, gid: int) -> None:
        self._create_group_files(self._so_path(so) / "alua" / group, gid)

    def _delete_group(self, so: str, group: str) -> None:
        shutil.rmtree(self._so_path(so) / "alua" / group)

    def _set_lu_group(self, so: str, group: str) -> None:
        gid = (self.root / "core/alua/lu_gps" / group / "lu_gp_id").read_text()
        _touch(self._so_path(so) / "alua_lu_gp", f"LU Group Alias: {group}\nLU Group ID: {gid}")

    def _create_lu_group(self, name: str, gid: int) -> None:
        _touch(self.root / "core/alua/lu_gps" / name / "lu_gp_id", str(gid))

    def _delete_lu_group(self, name: str) -> None:
        shutil.rmtree(self.root / "core/alua/lu_gps" / name)

    def _delete_so(self, name: str) -> None:
        key = f"{self._so_path(name).parent.name}/{name}"
        for link in (self.root / "iscsi").glob("*/tpgt_*/lun/lun_*/*"):
            if link.is_symlink() and os.readlink(link).endswith(key):
                raise OSError(errno.EBUSY, "Device or resource busy", str(self._so_path(name)))
        shutil.rmtree(self._so_path(name).parent)
        self._hba.pop(name, None)

    def _create_target(self, iqn: str) -> None:
        (self.root / "iscsi" / iqn).mkdir()

    def _create_tpg(self, iqn: str, tag: int) -> None:
        tpg = self._tpg_path(iqn, tag)
        tpg.mkdir()
        _touch(tpg / "enable", "0")
        _touch(tpg / "rtpi", "0x0")
        for attr in TPG_ATTRS:
            _touch(tpg / "attrib" / attr, "0")
        for f in ("userid", "password", "userid_mutual", "password_mutual"):
            _touch(tpg / "auth" / f)
        for sub in ("np", "lun", "acls"):
            (tpg / sub).mkdir()

    def _set_tpg_rtpi(self, iqn: str, tag: int, rtpi: int | None) -> None:
        if (self._tpg_path(iqn, tag) / "enable").read_text() == "1":
            raise OSError(errno.EINVAL, "Can not change RTPI on enabled TPG")
        super()._set_tpg_rtpi(iqn, tag, rtpi)

    def _create_portal(self, iqn: str, tag: int, np: str) -> None:
        (self._tpg_path(iqn, tag) / "np" / np).mkdir()

    def _delete_portal(self, iqn: str, tag: int, np: str) -> None:
        (self._tpg_path(iqn, tag) / "np" / np).rmdir()

    def _create_lun(self, iqn: str, tag: int, lun_id: int, so: str) -> None:
        path = self._tpg_path(iqn, tag) / "lun" / f"lun_{lun_id}"
        path.mkdir()
        os.symlink(self._so_path(so), path / "link")
        _touch(path / "alua_tg_pt_gp", "TG Port Alias: default_tg_pt_gp\nTG Port Group ID: 0")

    def _set_lun_group(self, iqn: str, tag: int, lun_id: int, group: str) -> None:
        _touch(self._tpg_path(iqn, tag) / "lun" / f"lun_{lun_id}" / "alua_tg_pt_gp", f"TG Port Alias: {group}")

    def _create_acl(self, iqn: str, tag: int, initiator: str) -> None:
        path = self._tpg_path(iqn, tag) / "acls" / initiator
        path.mkdir()
        _touch(path / "attrib" / "authentication", "-1")
        for f in ("userid", "password", "userid_mutual", "password_mutual"):
            _touch(path / "auth" / f)

    def _create_mapped_lun(self, iqn: str, tag: int, initiator: str, mapped: int, tpg_lun: int) -> None:
        super()._create_mapped_lun(iqn, tag, initiator, mapped, tpg_lun)
        _touch(self._tpg_path(iqn, tag) / "acls" / initiator / f"lun_{mapped}" / "write_protect", "0")

    def _delete_tpg(self, iqn: str, tag: int) -> None:
        shutil.rmtree(self._tpg_path(iqn, tag))

    def _delete_target(self, iqn: str) -> None:
        shutil.rmtree(self.root / "iscsi" / iqn)

    def _delete_acl(self, iqn: str, tag: int, initiator: str) -> None:
        shutil.rmtree(self._tpg_path(iqn, tag) / "acls" / initiator)

    def _delete_lun(self, iqn: str, tag: int, lun_id: int) -> None:
        tpg = self._tpg_path(iqn, tag)
        for mapped in tpg.glob("acls/*/lun_*"):
            if any(os.readlink(e).endswith(f"/lun_{lun_id}") for e in mapped.iterdir() if e.is_symlink()):
                shutil.rmtree(mapped)
        shutil.rmtree(tpg / "lun" / f"lun_{lun_id}")

    def _delete_mapped_lun(self, iqn: str, tag: int, initiator: str, mapped: int) -> None:
        shutil.rmtree(self._tpg_path(iqn, tag) / "acls" / initiator / f"lun_{mapped}")


# --- configuration builders -------------------------------------------------------------------------------

HEAD = """
[cluster]
name = "lab"
backend = "lio"
port_takeover = {takeover}

[[node]]
name = "ctrl-a"
id = 1
  [[node.interface]]
  name = "eth1"
  address = "192.0.2.1/24"
{portals_a}
[[node]]
name = "ctrl-b"
id = 2
  [[node.interface]]
  name = "eth1"
  address = "192.0.2.2/24"
{portals_b}
[zookeeper]
hosts = ["127.0.0.1:2181"]
"""


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value) + '"'


def _table(name: str, d: dict) -> list[str]:
    return [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in d.items() if v is not None and (
        not isinstance(v, dict | list) or (isinstance(v, list) and v and not isinstance(v[0], dict))))]


def lio_config(devices: list[str], *, luns: list[dict] | None = None, acls: list[dict] | None = None,
               target: dict | None = None, vip: bool = True, discovery: bool = True, takeover: bool = True,
               extra_targets: list[dict] | None = None) -> Config:
    """Two controllers with managed portals, a VIP, discovery CHAP and one target (two LUNs, the first thin)."""
    portals = ["  [[node.portal]]\n  address = \"192.0.2.11/24\"\n  interface = \"eth1\"\n",
               "  [[node.portal]]\n  address = \"192.0.2.12/24\"\n  interface = \"eth1\"\n"]
    out = [HEAD.format(takeover=_toml(takeover), portals_a=portals[0], portals_b=portals[1])]
    if vip:
        out += ['[[vip]]', 'address = "192.0.2.10/24"', 'interface = "eth1"', '']
    if discovery:
        out += ['[iscsi.discovery_auth]', 'userid = "discovery"', 'secret = "disc0very-Secr3t"', '']
    t = {"iqn": IQN, "allowed_networks": ["192.0.2.0/24"],
         "auth": {"userid": "array1", "secret": "Array1-Chap-01", "mutual_userid": "array1-target",
                  "mutual_secret": "Array1-Mutual-1"}}
    t |= target or {}
    luns = luns if luns is not None else [
        {"id": 0, "name": "ds01", "device": devices[0], "serial": SN[0], "thin": True},
        {"id": 1, "name": "ds02", "device": devices[1], "serial": SN[1]}]
    acls = acls if acls is not None else [
        {"initiator": ESX, "auth": {"userid": "esx01", "secret": "Esx01-Chap-Key1", "mutual_userid": "array1-esx01",
                                    "mutual_secret": "Esx01-Mutual-K1"}},
        {"initiator": HOST, "luns": [0]}]
    for tt in [dict(t, lun=luns, acl=acls), *(extra_targets or [])]:
        out += _table("[target]", tt)
        if tt.get("auth"):
            out += _table("target.auth", tt["auth"])
        for lun in tt.get("lun", []):
            out += _table("[target.lun]", lun)
            if lun.get("vaai"):
                out += _table("target.lun.vaai", lun["vaai"])
        for acl in tt.get("acl", []):
            out += _table("[target.acl]", acl)
            if acl.get("auth"):
                out += _table("target.acl.auth", acl["auth"])
        out.append("")
    return loads("\n".join(out))


def make_devices(tmp_path: Path) -> list[str]:
    """Stand-ins for the shared disks (plain files: the tests skip the block-device checks unless they test them)."""
    paths = []
    for i in range(8):
        path = tmp_path / f"disk{i}"
        path.write_text("")
        paths.append(str(path))
    return paths


# -- the fake itself -------------------------------------------------------------------------------------------

def test_fake_refuses_what_the_kernel_refuses(lio: FakeLio, devices: list[str]) -> None:
    lio.run(Op("create_target", (IQN,)))
    lio.run(Op("create_tpg", (IQN, 1)))
    lio.run(Op("set_tpg_enable", (IQN, 1, True)))
    with pytest.raises(OpFailed, match="RTPI"):
        lio.run(Op("set_tpg_rtpi", (IQN, 1, 5)))
    lio.run(Op("create_so", ("hac-x", devices[0], SN[0])))
    lio.run(Op("create_lun", (IQN, 1, 0, "hac-x")))
    with pytest.raises(OpFailed, match="busy"):
        lio.run(Op("delete_so", ("hac-x",)))
    with pytest.raises(OpFailed):
        lio.run(Op("create_lun", (IQN, 1, 0, "hac-x")))


def test_fake_reads_back_through_the_real_reader(lio: FakeLio, devices: list[str]) -> None:
    lio.run(Op("create_so", ("hac-x", devices[0], SN[0])))
    lio.run(Op("create_group", ("hac-x", "hac-node1", 1)))
    lio.run(Op("set_group_attr", ("hac-x", "hac-node1", "alua_access_type", "1")))
    snap = lio.snapshot()
    so = snap.storage["hac-x"]
    assert (so.serial, so.udev_path, so.lu_group) == (SN[0], devices[0], "default_lu_gp")
    assert so.groups["hac-node1"].id == 1 and so.groups["hac-node1"].attrs["alua_access_type"] == "1"
    assert "default_tg_pt_gp" not in so.groups
