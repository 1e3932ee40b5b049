"""The configured target model as LIO objects on one controller, and the checks that refuse what LIO cannot do.

Pure apart from :func:`host_problems` / :func:`host_warnings`, which look at the backing devices.

Access, in the order a connection meets it (docs/lio.md):

1. **Network** (``allowed_networks``): nftables on this controller's portals (``nft.py``); LIO itself has no IP
   ACLs. Targets that share a TCP port share the portals, so they must allow the same networks.
2. **Initiator name**: one explicit LIO node ACL per ``[[target.acl]] initiator``, mapping the LUNs it may see.
   A ``chap_user`` ACL (any initiator name, one CHAP user) becomes LIO's dynamic ACLs
   (``generate_node_acls``) guarded by TPG-level CHAP; so does a target with no initiator ACLs but networks or
   target CHAP (what tgt admits in that case too). Dynamic ACLs see every LUN of the target.
3. **CHAP**: per ACL (the ACL's own ``auth``, else ``[target.auth]``), required exactly for ACLs that have one
   (node ACL ``attrib/authentication``), with mutual CHAP when a mutual user is set. Discovery (SendTargets)
   has its own ``[iscsi.discovery_auth]``.

Topology (docs/lio.md): each target gets three TPGs on each controller: this controller's port (tag = its
node id, enabled), the peer's port (the peer's tag and relative port id, **disabled** unless this controller
adopted it, listed in SendTargets so discovery from either side returns both ports), and a disabled
discovery-only TPG holding the VIP portals (SendTargets works on a disabled TPG's portal; logins do not).
"""

from __future__ import annotations

import os
import stat
from collections import Counter

from hacontrol.adapters.targets import backend_problems
from hacontrol.config.schema import Acl, Chap, Config, Lun, Node, Target
from hacontrol.core.problems import Problem

from . import names
from .model import NO_AUTH, NO_SECRET, Auth, Desired, DesiredAcl, DesiredGroup, DesiredSo, DesiredTarget, DesiredTpg

IMPLICIT_TRANSITION_S = 10  # advertised in REPORT TARGET PORT GROUPS: how long initiators wait on Transitioning
ROLES = ("own", "peer", "discovery")


def b(flag: bool) -> str:
    return "1" if flag else "0"


def group_attrs() -> dict[str, str]:
    """Implicit ALUA only (TPGS = 1): an initiator's SET TARGET PORT GROUPS could make a standby Active/Optimized
    behind the agent's back (no lease, no fencing), so explicit ALUA stays off. AO, Standby, Transitioning and
    Unavailable are the states hacontrol uses; nothing waits before or after a transition."""
    return {"alua_access_type": "1", "alua_support_active_optimized": "1",
            "alua_support_active_nonoptimized": "0", "alua_support_standby": "1",
            "alua_support_unavailable": "1", "alua_support_transitioning": "1", "alua_support_offline": "0",
            "nonop_delay_msecs": "0", "trans_delay_msecs": "0", "implicit_trans_secs": str(IMPLICIT_TRANSITION_S),
            "alua_write_metadata": "0"}


# What LIO (6.12) gives a new ALUA group and a new block storage object (read back in the rig): a just-created
# object is written only where the configuration differs. The background check after every apply reads the
# real values, so a kernel with other defaults is corrected on the next call, not silently accepted.
GROUP_DEFAULTS = {"alua_access_type": "3", "alua_support_active_optimized": "1",
                  "alua_support_active_nonoptimized": "1", "alua_support_standby": "1",
                  "alua_support_unavailable": "1", "alua_support_transitioning": "1", "alua_support_offline": "1",
                  "nonop_delay_msecs": "100", "trans_delay_msecs": "0", "implicit_trans_secs": "0",
                  "alua_write_metadata": "0"}
SO_DEFAULTS = {"emulate_caw": "1", "emulate_3pc": "1", "emulate_tpu": "0", "emulate_tpws": "0", "emulate_rsoc": "1",
               "emulate_model_alias": "0", "force_pr_aptpl": "0"}
# Written only on a storage object just created (before its first export): LIO refuses it while exported.
CREATE_ONLY_ATTRS = frozenset({"force_pr_aptpl"})


MAX_UNMAP_LBA_COUNT = 1 << 20  # blocks per UNMAP (512 MiB at 512-byte blocks)


def so_attrs(lun: Lun) -> dict[str, str]:
    """VAAI, VMware and reservation attributes; written in this order (UNMAP before WRITE SAME with UNMAP, and the
    UNMAP limit after them: enabling emulate_tpu resets it from the device).

    The unmap granularity and alignment stay what the device reports (its allocation unit, e.g. the dm-thin
    block). The MAXIMUM UNMAP LBA COUNT is capped: LIO copies the device's discard limit (8 Mi blocks on the
    rig's shelf), and one UNMAP that large can outlast an initiator's command timeout on a busy thin pool.
    emulate_write_cache is not set: for block backstores LIO reports the backing device's own write cache and
    refuses to emulate one (see :func:`host_warnings`)."""
    unmap = lun.thin and lun.vaai.unmap
    # force_pr_aptpl: LIO writes the initiators' reservations to its APTPL file on every PR-OUT, which is
    # how they reach the next active controller (prsync.py)
    attrs = {"force_pr_aptpl": "1", "emulate_caw": b(lun.vaai.ats), "emulate_3pc": b(lun.vaai.xcopy),
             "emulate_tpu": b(unmap), "emulate_tpws": b(lun.thin and lun.vaai.write_same), "emulate_rsoc": "1",
             "emulate_model_alias": "0"}
    if unmap:
        attrs["max_unmap_lba_count"] = str(MAX_UNMAP_LBA_COUNT)
    return attrs


def portal_addresses(node: Node) -> tuple[str, ...]:
    """Where a controller's port listens: its managed portals, else its interfaces' static addresses."""
    if node.portals:
        return tuple(str(p.address.ip) for p in node.portals)
    return tuple(str(i.address.ip) for i in node.interfaces)


def dynamic_access(t: Target) -> bool:
    """LIO dynamic ACLs: a chap_user ACL, or no initiator ACLs but networks or target CHAP to admit by."""
    if any(a.chap_user for a in t.acls):
        return True
    return not any(a.initiator for a in t.acls) and bool(t.allowed_networks or t.chap)


def auth_of(chap: Chap | None) -> Auth:
    if chap is None:
        return NO_AUTH
    return Auth(chap.userid, chap.secret, chap.mutual_userid or "", chap.mutual_secret or NO_SECRET)


def dynamic_auth(t: Target) -> Auth:
    user_acl = next((a for a in t.acls if a.chap_user), None)
    if user_acl is None:
        return auth_of(t.chap)
    if user_acl.chap is not None:
        return auth_of(user_acl.chap)
    return auth_of(t.chap) if t.chap is not None and t.chap.userid == user_acl.chap_user else NO_AUTH


def _tpg_attrs(role: str, t: Target) -> dict[str, str]:
    if role == "discovery":
        return {"generate_node_acls": "0", "tpg_enabled_sendtargets": "1"}
    dynamic = dynamic_access(t)
    chap_anywhere = t.chap is not None or any(a.chap is not None or a.chap_user for a in t.acls)
    return {"generate_node_acls": b(dynamic), "cache_dynamic_acls": "0",
            "demo_mode_write_protect": b(not dynamic), "prod_mode_write_protect": "0",
            "authentication": b(not dynamic_auth(t).empty if dynamic else chap_anywhere),
            # The peer's port is disabled here but must still be listed by SendTargets.
            "tpg_enabled_sendtargets": b(role != "peer")}


def _acl(a: Acl, t: Target) -> DesiredAcl:
    ids = tuple(sorted(a.luns)) if a.luns is not None else tuple(sorted(lun.id for lun in t.luns))
    return DesiredAcl(initiator=a.initiator or "", auth=auth_of(a.chap or t.chap), mapped=ids)


def _tpg(cfg: Config, ti: int, t: Target, role: str, owner: Node) -> DesiredTpg:
    if role == "discovery":
        portals = tuple(names.portal_name(str(v.address.ip), t.port) for v in cfg.vips)
        return DesiredTpg(tag=names.DISCOVERY_TAG, role=role, rtpi=None, enabled=False,
                          attrs=_tpg_attrs(role, t), auth=NO_AUTH, portals=portals)
    group = names.group_name(owner)
    luns = tuple((lun.id, names.so_name(lun), group) for lun in sorted(t.luns, key=lambda x: x.id))
    acls = tuple(_acl(a, t) for a in t.acls if a.initiator)
    return DesiredTpg(tag=names.tpg_tag(owner), role=role, rtpi=names.rtpi(cfg, ti, owner),
                      enabled=True if role == "own" else None, attrs=_tpg_attrs(role, t),
                      auth=dynamic_auth(t) if dynamic_access(t) else NO_AUTH,
                      portals=tuple(names.portal_name(a, t.port) for a in portal_addresses(owner)),
                      luns=luns, acls=acls)


def desired_state(cfg: Config, node_name: str) -> Desired:
    """The LIO objects ``cfg`` asks for on ``node_name``. Call :func:`problems` first."""
    node, peer = cfg.node(node_name), cfg.peer_of(node_name)
    storage = tuple(DesiredSo(names.so_name(lun), lun.device, lun.serial, so_attrs(lun), lun.name)
                    for t in cfg.targets for lun in sorted(t.luns, key=lambda x: x.id))
    groups = (DesiredGroup(names.group_name(node), names.group_id(node), group_attrs()),
              DesiredGroup(names.group_name(peer), names.group_id(peer), group_attrs()))
    targets = []
    for ti, t in enumerate(cfg.targets):
        tpgs = [_tpg(cfg, ti, t, "own", node), _tpg(cfg, ti, t, "peer", peer)]
        if cfg.vips:
            tpgs.append(_tpg(cfg, ti, t, "discovery", node))
        targets.append(DesiredTarget(t.iqn, tuple(tpgs)))
    return Desired(storage=storage, groups=groups, targets=tuple(targets),
                   discovery=auth_of(cfg.discovery_chap), nonlocal_bind=True)


# --- what LIO cannot do as configured ----------------------------------------------------------------------

def problems(cfg: Config, node: str | None) -> list[Problem]:
    """Everything in ``cfg`` the LIO adapter refuses (pure: no file system access)."""
    p = backend_problems(cfg, node, "lio")
    for i, n in enumerate(cfg.nodes):
        if n.id == names.DISCOVERY_TAG:
            p.append(Problem(f"node[{i}].id", n.id, "is the TPG tag the LIO adapter uses for the discovery-only "
                             "portals (the VIPs)", "give the controllers small ids such as 1 and 2"))
        if cfg.port_takeover and not n.portals:
            p.append(Problem(f"node[{i}].portal", [], "port takeover moves a controller's [[node.portal]] "
                             f"addresses to the survivor, and {n.name} has none (its static addresses cannot move)",
                             "add a [[node.portal]] per data interface, or set cluster.port_takeover = false"))
    counts = Counter(lun.name for t in cfg.targets for lun in t.luns)
    for name in sorted(n for n, c in counts.items() if c > 1):
        p.append(Problem("target.lun.name", name, "LUN names name the LIO backstores (hac-<name>), so they must "
                         "be unique across all targets", "rename one of the LUNs"))
    p.extend(_network_problems(cfg))
    for ti, t in enumerate(cfg.targets):
        p.extend(_acl_problems(f"target[{ti}]", t))
    return p


def _network_problems(cfg: Config) -> list[Problem]:
    by_port: dict[int, set[tuple[str, ...]]] = {}
    for t in cfg.targets:
        by_port.setdefault(t.port, set()).add(tuple(sorted(str(n) for n in t.allowed_networks)))
    return [Problem("target.allowed_networks", [list(v) for v in sorted(variants)],
                    f"targets on port {port} share its portals, and the network filter (nftables) cannot tell "
                    "their logins apart", "give these targets the same allowed_networks, or different ports")
            for port, variants in sorted(by_port.items()) if len(variants) > 1]


def _acl_problems(key: str, t: Target) -> list[Problem]:
    p: list[Problem] = []
    for ai, a in enumerate(t.acls):
        if not a.chap_user:
            continue
        if a.luns is not None:
            p.append(Problem(f"{key}.acl[{ai}].luns", list(a.luns), "a chap_user ACL is an LIO dynamic ACL, "
                             "which sees every LUN of the target", "remove luns, or use an initiator ACL"))
        if dynamic_auth(t).empty:
            p.append(Problem(f"{key}.acl[{ai}].auth", None, f"chap_user {a.chap_user!r} has no secret",
                             "add [target.acl.auth] with this userid and a secret"))
        elif dynamic_auth(t).userid != a.chap_user:
            p.append(Problem(f"{key}.acl[{ai}].auth.userid", dynamic_auth(t).userid,
                             f"differs from chap_user {a.chap_user!r}", "make them the same"))
    return p


def host_problems(cfg: Config) -> list[Problem]:
    """Backing devices LIO could not export as configured: checked before anything is changed."""
    p: list[Problem] = []
    for ti, t in enumerate(cfg.targets):
        for li, lun in enumerate(t.luns):
            key = f"target[{ti}].lun[{li}]"
            message = device_error(lun.device)
            if message:
                p.append(Problem(f"{key}.device", lun.device, message,
                                 "point device at the shared disk (/dev/disk/by-id/...), or fix the path"))
            elif lun.thin and (lun.vaai.unmap or lun.vaai.write_same) and not discard_supported(lun.device):
                p.append(Problem(f"{key}.thin", True, f"{lun.device} does not support discard, so LIO cannot "
                                 "offer UNMAP or WRITE SAME with UNMAP", "set thin = false, or use a thin device "
                                 "(LVM thin volume, a SAN LUN with UNMAP)"))
    return p


def host_warnings(cfg: Config) -> list[Problem]:
    w: list[Problem] = []
    for ti, t in enumerate(cfg.targets):
        for li, lun in enumerate(t.luns):
            cache = write_cache_of(lun.device)
            if cache is not None and cache != lun.write_cache:
                w.append(Problem(f"target[{ti}].lun[{li}].write_cache", lun.write_cache, f"LIO reports the "
                                 f"write cache of {lun.device} itself ({'write back' if cache else 'write through'})"
                                 " for a block backstore and cannot emulate another", "set write_cache to match "
                                 "the device; either way is safe (initiators flush when a cache is reported)"))
        if not t.acls and not t.allowed_networks and t.chap is None:
            w.append(Problem(f"target[{ti}].acl", [], "no ACL, network or CHAP admits any initiator",
                             "add [[target.acl]] entries, allowed_networks or [target.auth]"))
    return w


def _block_name(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    link = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return os.path.basename(os.path.realpath(link))


def device_error(path: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if not stat.S_ISBLK(st.st_mode):
        return "is not a block device (LUNs are LIO block backstores)"
    return None


def _queue_file(path: str, name: str) -> str | None:
    dev = _block_name(path)
    if dev is None:
        return None
    for candidate in (f"/sys/class/block/{dev}/queue/{name}", f"/sys/class/block/{dev}/../queue/{name}"):
        try:
            with open(candidate) as f:
                return f.read().strip()
        except OSError:
            continue
    return None


def discard_supported(path: str) -> bool:
    value = _queue_file(path, "discard_max_bytes")
    return value is not None and value.isdigit() and int(value) > 0


def force_write_through(cfg: Config) -> list[str]:
    """For every LUN configured without a write cache whose device reports one, switch the device's queue to
    "write through". LIO reports a block backstore's own cache (WCE, and FUA support with it), so this is what
    keeps both controllers presenting the same caching mode: a controller whose view of the shared disk says
    "write back" would accept FUA writes that the other one refuses with ILLEGAL REQUEST (seen in the rig after
    a reboot changed one controller's view). Returns the devices changed."""
    changed = []
    for t in cfg.targets:
        for lun in t.luns:
            if lun.write_cache or write_cache_of(lun.device) is not True:
                continue
            dev = _block_name(lun.device)
            try:
                with open(f"/sys/class/block/{dev}/queue/write_cache", "w") as f:
                    f.write("write through")
                changed.append(lun.device)
            except OSError:
                continue  # host_warnings names the mismatch
    return changed


def write_cache_of(path: str) -> bool | None:
    value = _queue_file(path, "write_cache")
    return None if value is None else value.startswith("write back")
