"""Checks that need the whole configuration: uniqueness, addresses inside networks, cross references."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from hacontrol.config.schema import Config, Node, Target
from hacontrol.core.problems import Problem


def cross_check(cfg: Config) -> list[Problem]:
    problems: list[Problem] = []
    problems.extend(_nodes(cfg))
    problems.extend(_addresses(cfg))
    problems.extend(_targets(cfg))
    problems.extend(_fencing(cfg))
    problems.extend(_peer_link(cfg))
    if cfg.backend == "tgt" and cfg.port_takeover:
        problems.append(Problem("cluster.port_takeover", True, "port takeover needs ALUA target ports (backend lio)",
                                "set port_takeover = false with backend = \"tgt\""))
    return problems


def _dupes(values: Iterable[object]) -> list[object]:
    return [v for v, n in Counter(values).items() if n > 1]


def _nodes(cfg: Config) -> list[Problem]:
    p: list[Problem] = []
    for name in _dupes(n.name for n in cfg.nodes):
        p.append(Problem("node.name", name, "two controllers have the same name", "give each [[node]] its own name"))
    for node_id in _dupes(n.id for n in cfg.nodes):
        p.append(Problem("node.id", node_id, "two controllers have the same id (it is part of the reservation "
                         "key and of the ALUA group and port ids)", "give the controllers ids 1 and 2"))
    for i, n in enumerate(cfg.nodes):
        for name in _dupes(x.name for x in n.interfaces):
            p.append(Problem(f"node[{i}].interface.name", name, "listed twice", "list each interface once"))
    return p


def _in_network(node: Node, iface_name: str, address: object) -> str | None:
    iface = node.interface(iface_name)
    if iface is None:
        return f"{node.name} has no interface {iface_name!r} in its [[node.interface]] list"
    if address not in iface.address.network:
        return f"is outside {iface_name}'s network {iface.address.network} on {node.name}"
    if address == iface.address.ip:
        return f"is {node.name}'s own static address on {iface_name}"
    return None


def _addresses(cfg: Config) -> list[Problem]:
    p: list[Problem] = []
    names = cfg.node_names
    for i, vip in enumerate(cfg.vips):
        for node_name, _ in vip.overrides:
            if node_name not in names:
                p.append(Problem(f"vip[{i}].interface_overrides.{node_name}", node_name, "is not a controller",
                                 f"use one of {', '.join(names)}"))
        for node in cfg.nodes:
            if vip.address.ip.is_unspecified:
                break  # the address itself failed to parse and was reported already
            iface = vip.interface_for(node.name)
            message = _in_network(node, iface, vip.address.ip)
            if message:
                p.append(Problem(f"vip[{i}].address", str(vip.address), message,
                                 f"choose an address in the network of {iface} on {node.name}, or fix the interface"))
    for i, node in enumerate(cfg.nodes):
        for j, portal in enumerate(node.portals):
            if portal.address.ip.is_unspecified:
                continue
            message = _in_network(node, portal.interface, portal.address.ip)
            if message:
                p.append(Problem(f"node[{i}].portal[{j}].address", str(portal.address), message,
                                 f"choose an address in the network of {portal.interface}"))
            if cfg.port_takeover:
                peer = cfg.peer_of(node.name) if node.name in names and len(set(names)) == 2 else None
                if peer is not None and peer.interface(portal.interface) is None:
                    p.append(Problem(f"node[{i}].portal[{j}].interface", portal.interface,
                                     f"port takeover moves this portal to {peer.name}, which has no such interface",
                                     "use an interface name both controllers have, or disable port_takeover"))
    every = [str(v.address.ip) for v in cfg.vips]
    every += [str(pt.address.ip) for n in cfg.nodes for pt in n.portals]
    every += [str(i.address.ip) for n in cfg.nodes for i in n.interfaces]
    every = [a for a in every if a != "0.0.0.0"]
    for addr in _dupes(every):
        p.append(Problem("vip/portal", addr, "the same address is used twice (VIPs, portals, static addresses)",
                         "give every VIP and portal its own address"))
    return p


def _targets(cfg: Config) -> list[Problem]:
    p: list[Problem] = []
    for iqn in _dupes(t.iqn for t in cfg.targets):
        p.append(Problem("target.iqn", iqn, "two targets have the same IQN", "give each target its own IQN"))
    all_luns = [(ti, lun) for ti, t in enumerate(cfg.targets) for lun in t.luns]
    for serial in _dupes(lun.serial for _, lun in all_luns if lun.serial):
        p.append(Problem("target.lun.serial", serial, "two LUNs have the same serial, so ESXi would see one device",
                         "give every LUN its own serial"))
    by_naa: dict[str, set[str]] = {}
    for _, lun in all_luns:
        if lun.serial:
            by_naa.setdefault(lun.naa, set()).add(lun.serial)
    for naa, group in by_naa.items():
        if len(group) > 1:
            p.append(Problem("target.lun.serial", sorted(group), f"different serials give the same NAA identity "
                             f"{naa} (LIO derives it from the first 25 hex digits)",
                             "make the serials differ within their first 25 hex digits"))
    for dev in _dupes(lun.device for _, lun in all_luns if lun.device):
        p.append(Problem("target.lun.device", dev, "the same backing device is exported twice",
                         "export each device once (one LUN, possibly several ACLs)"))
    for ti, t in enumerate(cfg.targets):
        p.extend(_target(ti, t))
    if cfg.discovery_chap and not cfg.targets:
        p.append(Problem("iscsi.discovery_auth", "***", "discovery CHAP without any target",
                         "add a [[target]] or remove discovery_auth"))
    return p


def _target(ti: int, t: Target) -> list[Problem]:
    p: list[Problem] = []
    key = f"target[{ti}]"
    for lun_id in _dupes(lun.id for lun in t.luns):
        p.append(Problem(f"{key}.lun.id", lun_id, "two LUNs have the same id", "give every LUN its own id"))
    for name in _dupes(lun.name for lun in t.luns):
        p.append(Problem(f"{key}.lun.name", name, "two LUNs have the same name", "give every LUN its own name"))
    for ini in _dupes(a.initiator for a in t.acls if a.initiator):
        p.append(Problem(f"{key}.acl.initiator", ini, "listed twice", "merge the two ACLs"))
    if sum(1 for a in t.acls if a.chap_user) > 1:
        p.append(Problem(f"{key}.acl.chap_user", [a.chap_user for a in t.acls if a.chap_user],
                         "LIO supports one CHAP-user ACL per target port group",
                         "keep one chap_user ACL; give other hosts initiator ACLs"))
    ids = {lun.id for lun in t.luns}
    for ai, acl in enumerate(t.acls):
        for lun_id in acl.luns or ():
            if lun_id not in ids:
                p.append(Problem(f"{key}.acl[{ai}].luns", lun_id, "no LUN of this target has that id",
                                 f"use ids from {sorted(ids)}"))
    return p


def _fencing(cfg: Config) -> list[Problem]:
    p: list[Problem] = []
    for i, node in enumerate(cfg.nodes):
        methods = [f.method for f in node.fencing]
        for m in _dupes(methods):
            p.append(Problem(f"node[{i}].fencing.method", m, "listed twice", "list each fence method once"))
        if "scsi_pr" in methods and cfg.backend == "tgt" and not any(f.devices for f in node.fencing):
            p.append(Problem(f"node[{i}].fencing", "scsi_pr", "needs devices when the backend is tgt "
                             "(tgt LUNs are files, not shared SCSI disks)", "list the shared disks in devices"))
    return p


MAX_LINK_PATHS = 4


def _peer_link(cfg: Config) -> list[Problem]:
    p: list[Problem] = []
    counts = [len(n.peer_link) for n in cfg.nodes]
    if cfg.peer_link is None:
        if any(counts):
            p.append(Problem("peer_link", None, "node.peer_link addresses are set but there is no [peer_link] "
                             "table (it holds the shared key)",
                             'add [peer_link] with key = "...", or remove the addresses'))
        return p
    for i, node in enumerate(cfg.nodes):
        if not node.peer_link:
            p.append(Problem(f"node[{i}].peer_link", [], f"{node.name} has no peer-link address",
                             "list its static address on each path, the cluster link first, e.g. "
                             '["192.0.2.11", "198.51.100.11"]'))
        elif len(node.peer_link) > MAX_LINK_PATHS:
            p.append(Problem(f"node[{i}].peer_link", list(node.peer_link), f"more than {MAX_LINK_PATHS} paths",
                             "list one address per path: the cluster link and one data network are enough"))
    if all(counts) and counts[0] != counts[1]:
        p.append(Problem("node.peer_link", counts, "the controllers list a different number of paths (path N of one "
                         "talks to path N of the other)", "list one address per path on both, in the same order"))
    elif all(counts):
        for j, (a, b) in enumerate(zip(cfg.nodes[0].peer_link, cfg.nodes[1].peer_link, strict=True)):
            if (":" in a) != (":" in b):
                p.append(Problem(f"node.peer_link[{j}]", [a, b], "path mixes IPv4 and IPv6",
                                 "use addresses of one network on both ends of a path"))
    for addr in _dupes(a for n in cfg.nodes for a in n.peer_link):
        p.append(Problem("node.peer_link", addr, "listed twice", "give each path of each controller its own address"))
    if cfg.peer_link.fast_takeover:
        for i, node in enumerate(cfg.nodes):
            if not node.powers_off:
                p.append(Problem(
                    "peer_link.fast_takeover", True,
                    f"{node.name} has no power fence method: a silent peer is taken over only once it is confirmed "
                    "off (reservations alone would leave its kernel serving with its writes refused)",
                    f"add an ipmi, qmp or command method to node[{i}].fencing, or set fast_takeover = false"))
    return p


def warnings(cfg: Config) -> list[Problem]:
    """Legal but risky settings: reported by `hactl config check`, not refused."""
    w: list[Problem] = []
    for i, node in enumerate(cfg.nodes):
        if not node.fencing:
            w.append(Problem(f"node[{i}].fencing", [], f"no fence method for {node.name}: the peer will not take "
                             f"over automatically when {node.name} fails", "add scsi_pr and a power method"))
    if not cfg.zookeeper.username:
        w.append(Problem("zookeeper.username", None, "znodes are world-writable without a digest ACL",
                         "set username and password"))
    if not cfg.targets and cfg.backend == "lio":
        w.append(Problem("target", [], "no target configured", "add a [[target]] with LUNs"))
    return w
