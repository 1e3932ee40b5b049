"""One TOML file -> a frozen :class:`Config`, or a :class:`ConfigError` listing every problem at once."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from hacontrol.config import names
from hacontrol.config.reader import Section
from hacontrol.config.schema import (
    BACKENDS,
    FENCE_POLICIES,
    KEY_LOST_ACTIONS,
    RESERVATION_TYPES,
    Acl,
    Chap,
    Config,
    FenceMethod,
    Fencing,
    Interface,
    Lun,
    Network,
    Node,
    PeerLink,
    Portal,
    Secret,
    Target,
    Vaai,
    Vip,
    ZooKeeper,
)
from hacontrol.config.semantics import cross_check
from hacontrol.core.problems import Problem
from hacontrol.core.timing import Timing

DEFAULT_PATH = "/etc/hacontrol/hacontrol.toml"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
FENCE_METHODS = ("scsi_pr", "ipmi", "qmp", "command")


class ConfigError(Exception):
    def __init__(self, problems: list[Problem], source: str = ""):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} configuration problem(s){where}:\n{lines}")


def load(path: str | Path = DEFAULT_PATH) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError([Problem("<file>", str(p), f"cannot be read ({exc.strerror})",
                                   "pass the right path with --config or create the file")], str(p)) from exc
    return loads(text, source=str(p))


def loads(text: str, source: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("<syntax>", source, f"is not valid TOML ({exc})",
                                   "fix the line the parser names")], source) from exc
    return from_dict(data, source)


def from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    problems: list[Problem] = []
    top = Section(data, "", problems)
    cfg = _build(top)
    top.finish()
    # Cross-checks run even when single keys failed, so one pass shows every problem;
    # keys that failed to parse hold neutral placeholders that cross_check skips.
    seen = {(p.key, str(p.value)) for p in problems}
    problems.extend(p for p in cross_check(cfg) if (p.key, str(p.value)) not in seen)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _build(top: Section) -> Config:
    cluster = top.table("cluster", required=True) or Section({}, "cluster", top.problems)
    name = cluster.str("name", example='"array1"')
    cluster.check("name", name, lambda v: None if _NAME.match(v) else "must be 1–63 of a-z 0-9 -",
                  'use a short lowercase name such as "array1"')
    backend = cluster.str("backend", "lio", choices=BACKENDS)
    port_takeover = cluster.bool("port_takeover", backend == "lio")
    state_dir = cluster.str("state_dir", "/var/lib/hacontrol")
    runtime_dir = cluster.str("runtime_dir", "/run/hacontrol")
    for key, value in (("state_dir", state_dir), ("runtime_dir", runtime_dir)):
        if isinstance(value, str) and not value.startswith("/"):
            example = "/var/lib/hacontrol" if key == "state_dir" else "/run/hacontrol"
            cluster.problem(key, value, "must be an absolute path", f'write e.g. "{example}"')
    cluster.finish()

    node_sections = top.tables("node")
    nodes = tuple(_node(s) for s in node_sections)
    if len(nodes) != 2:
        top.problem("node", len(nodes), "exactly two [[node]] tables are required (one per controller)",
                    "describe both controllers, each in its own [[node]] table")
        nodes = (*nodes, _placeholder_node("a"), _placeholder_node("b"))[:2]

    zk = _zookeeper(top.table("zookeeper", required=True) or Section({}, "zookeeper", top.problems), name)
    timing = _timing(top.table("timing"), top.problems)
    vips = tuple(_vip(s) for s in top.tables("vip"))
    iscsi = top.table("iscsi")
    discovery = _chap(iscsi.table("discovery_auth")) if iscsi else None
    if iscsi:
        iscsi.finish()
    targets = tuple(_target(s) for s in top.tables("target"))
    fencing = _fencing(top.table("fencing"))
    network = _network(top.table("network"))
    peer_link = _peer_link(top.table("peer_link"))
    watchdog = top.table("watchdog")
    watchdog_device = watchdog.str("device", "/dev/watchdog") if watchdog else "/dev/watchdog"
    if watchdog:
        watchdog.finish()
    metrics = top.table("metrics")
    metrics_listen = metrics.str("listen", "127.0.0.1:9475") if metrics else "127.0.0.1:9475"
    if metrics:
        metrics.finish()
    return Config(
        cluster_name=name or "", backend=backend or "lio", nodes=nodes, zookeeper=zk, timing=timing,
        vips=vips, discovery_chap=discovery, targets=targets, fencing=fencing, network=network,
        port_takeover=bool(port_takeover), peer_link=peer_link, watchdog_device=watchdog_device or "",
        metrics_listen=metrics_listen or "", state_dir=state_dir or "", runtime_dir=runtime_dir or "",
    )


def _placeholder_node(suffix: str) -> Node:
    return Node(name=f"missing-{suffix}", id=0, address="", interfaces=())


def _node(s: Section) -> Node:
    name = s.str("name", example='"ctrl-a"')
    s.check("name", name, lambda v: None if _NAME.match(v) else "must be 1–63 of a-z 0-9 -",
            'use the controller\'s short host name, e.g. "ctrl-a"')
    node_id = s.int("id", lo=1, hi=65535)
    address = s.str("address", "")
    interfaces = []
    for i in s.tables("interface"):
        iface = Interface(i.str("name", example='"eth1"') or "", i.interface_address("address") or _NOWHERE)
        i.finish()
        interfaces.append(iface)
    portals = []
    for p in s.tables("portal"):
        portals.append(Portal(p.interface_address("address") or _NOWHERE, p.str("interface", example='"eth1"') or ""))
        p.finish()
    fencing = tuple(_fence_method(f) for f in s.tables("fencing"))
    link = s.strs("peer_link", (), example='["192.0.2.11", "198.51.100.11"]') or ()
    for address in link:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            s.problem("peer_link", address, "is not an IP address (one per path, no prefix length)",
                      'write this controller\'s static address on each path, e.g. ["192.0.2.11", "198.51.100.11"]')
    s.finish()
    return Node(name=name or "", id=node_id or 0, address=address or "", interfaces=tuple(interfaces),
                portals=tuple(portals), fencing=fencing, peer_link=tuple(link))


_NOWHERE = ipaddress.ip_interface("0.0.0.0/32")  # stands in for an address that failed to parse


def _fence_method(s: Section) -> FenceMethod:
    method = s.str("method", choices=FENCE_METHODS)
    timeout = s.float("timeout_s", 10.0 if method in ("ipmi", "command") else 5.0)
    if isinstance(timeout, float) and timeout <= 0:
        s.problem("timeout_s", timeout, "must be positive", "give the method a few seconds, e.g. 5.0")
    kwargs: dict[str, Any] = {}
    if method == "scsi_pr":
        kwargs["devices"] = s.strs("devices", (), example='["/dev/disk/by-id/wwn-0x..."]')
    elif method == "ipmi":
        kwargs["host"] = s.str("host", example='"192.0.2.201"')
        kwargs["port"] = s.int("port", 623, lo=1, hi=65535)
        kwargs["username"] = s.str("username", example='"admin"')
        kwargs["password"] = s.secret("password")
        kwargs["ipmi_interface"] = s.str("interface", "lanplus", choices=("lan", "lanplus"))
        kwargs["cipher_suite"] = s.int("cipher_suite", 17, lo=0, hi=17)
    elif method == "qmp":
        kwargs["socket"] = s.str("socket", example='"/run/qemu/ctrl-a.qmp"')
    elif method == "command":
        argv = s.strs("argv", example='["/usr/sbin/fence_ipmilan", "--ip=192.0.2.201", "..."]')
        if argv is not None and not argv:
            s.problem("argv", [], "must name a program", "give the fence agent and its arguments")
        kwargs["argv"] = argv
    s.finish()
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return FenceMethod(method=method or "", timeout_s=timeout or 5.0, **kwargs)


def _zookeeper(s: Section, cluster: str | None) -> ZooKeeper:
    hosts = s.strs("hosts", example='["192.0.2.1:2181", "192.0.2.2:2181", "192.0.2.3:2181"]') or ()
    for h in hosts:
        host, _, port = h.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            s.problem("hosts", h, "is not host:port", 'write each member as "host:2181"')
    if hosts and len(hosts) % 2 == 0:
        s.problem("hosts", list(hosts), f"an ensemble of {len(hosts)} loses quorum as easily as one of "
                  f"{len(hosts) - 1}", "use an odd number of members: both controllers plus a witness")
    chroot = s.str("chroot", f"/hacontrol/{cluster or 'cluster'}")
    if isinstance(chroot, str) and (not chroot.startswith("/") or chroot.endswith("/") or "//" in chroot):
        s.problem("chroot", chroot, "must be an absolute znode path without a trailing slash",
                  'write e.g. "/hacontrol/array1"')
    username = s.str("username", None)
    password = s.secret("password", None)
    if (username is None) != (password is None):
        s.problem("password" if username else "username", "***" if password else None,
                  "username and password go together (digest ACL)", "give both, or neither")
    s.finish()
    return ZooKeeper(hosts=tuple(hosts), chroot=chroot or "/", username=username, password=password)


def _timing(s: Section | None, problems: list[Problem]) -> Timing:
    if s is None:
        return Timing()
    values: dict[str, float] = {}
    for f in fields(Timing):
        value = s.float(f.name, None)
        if value is not None:
            values[f.name] = value
    s.finish()
    timing = Timing(**values)
    if not any(p.key.startswith("timing.") for p in problems):
        problems.extend(timing.validate())
    return timing


def _vip(s: Section) -> Vip:
    address = s.interface_address("address")
    interface = s.str("interface", example='"eth1"')
    overrides = s.table("interface_overrides")
    pairs: list[tuple[str, str]] = []
    if overrides:
        for node, iface in overrides.data.items():
            overrides.str(node)
            if isinstance(iface, str):
                pairs.append((node, iface))
    s.finish()
    return Vip(address=address or _NOWHERE, interface=interface or "", overrides=tuple(pairs))


def _chap(s: Section | None) -> Chap | None:
    if s is None:
        return None
    userid = s.str("userid", example='"esx-cluster"')
    secret = s.secret("secret")
    s.check("userid", userid, names.chap_userid_error, "choose a CHAP user name")
    if secret is not None:
        message = names.chap_secret_error(secret.reveal())
        if message:
            s.problem("secret", "***", message, f"choose a secret of {names.CHAP_MIN}–{names.CHAP_MAX} characters")
    mutual_userid = s.str("mutual_userid", None)
    mutual_secret = s.secret("mutual_secret", None)
    if (mutual_userid is None) != (mutual_secret is None):
        s.problem("mutual_secret" if mutual_userid else "mutual_userid", None,
                  "mutual CHAP needs both mutual_userid and mutual_secret", "give both, or neither")
    if mutual_secret is not None:
        message = names.chap_secret_error(mutual_secret.reveal())
        if message:
            s.problem("mutual_secret", "***", message,
                      f"choose a secret of {names.CHAP_MIN}–{names.CHAP_MAX} characters")
        elif secret is not None and mutual_secret.reveal() == secret.reveal():
            s.problem("mutual_secret", "***", "equals the initiator secret (ESXi refuses this, and it defeats "
                      "mutual authentication)", "choose a different mutual secret")
    s.check("mutual_userid", mutual_userid, names.chap_userid_error, "choose a CHAP user name for the target")
    s.finish()
    return Chap(userid or "", secret or Secret(""), mutual_userid, mutual_secret)


def _target(s: Section) -> Target:
    iqn = s.str("iqn", example='"iqn.2026-11.com.example:array1"')
    s.check("iqn", iqn, names.iscsi_name_error, 'write e.g. "iqn.2026-11.com.example:array1"')
    port = s.int("port", 3260, lo=1, hi=65535)
    chap = _chap(s.table("auth"))
    networks = s.networks("allowed_networks")
    luns = tuple(_lun(x) for x in s.tables("lun"))
    acls = tuple(_acl(x) for x in s.tables("acl"))
    s.finish()
    return Target(iqn=iqn or "", port=port or 3260, chap=chap, allowed_networks=networks, luns=luns, acls=acls)


def _lun(s: Section) -> Lun:
    lun_id = s.int("id", lo=0, hi=16383)
    name = s.str("name", example='"ds01"')
    s.check("name", name, lambda v: None if re.match(r"^[A-Za-z0-9_.-]{1,64}$", v) else
            "must be 1–64 of letters, digits, _ . -", 'use e.g. "ds01"')
    device = s.str("device", example='"/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"')
    if isinstance(device, str) and not device.startswith("/"):
        s.problem("device", device, "must be an absolute path", "use a stable path such as /dev/disk/by-id/...")
    serial = s.str("serial", example='"6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7"')
    s.check("serial", serial, names.serial_error, "use a unique serial, e.g. a uuid without dashes")
    thin = s.bool("thin", False)
    write_cache = s.bool("write_cache", False)
    vaai_s = s.table("vaai")
    vaai = Vaai()
    if vaai_s:
        vaai = Vaai(ats=vaai_s.bool("ats", True), xcopy=vaai_s.bool("xcopy", True),
                    unmap=vaai_s.bool("unmap", True), write_same=vaai_s.bool("write_same", True))
        vaai_s.finish()
    warn = s.int("capacity_warn_percent", 80, lo=1, hi=99)
    s.finish()
    return Lun(id=lun_id if lun_id is not None else -1, name=name or "", device=device or "", serial=serial or "",
               naa=names.naa_from_serial(serial or ""), thin=bool(thin), write_cache=bool(write_cache), vaai=vaai,
               capacity_warn_percent=warn or 80)


def _acl(s: Section) -> Acl:
    initiator = s.str("initiator", None)
    chap_user = s.str("chap_user", None)
    if (initiator is None) == (chap_user is None):
        s.problem("initiator", initiator, "an ACL names either an initiator IQN or a chap_user",
                  "give exactly one of initiator = \"iqn...\" or chap_user = \"...\"")
    s.check("initiator", initiator, names.iscsi_name_error,
            "copy the host's name from ESXi (Storage Adapters > iSCSI > Properties), "
            'e.g. "iqn.1998-01.com.vmware:esx01-1a2b3c4d"')
    chap = _chap(s.table("auth"))
    if chap_user is not None:
        s.check("chap_user", chap_user, names.chap_userid_error, "choose a CHAP user name")
        if chap is None:
            s.problem("auth", None, "a chap_user ACL needs the CHAP secret", "add [target.acl.auth] with userid = "
                      "the chap_user and a secret")
        elif chap.userid != chap_user:
            s.problem("auth.userid", chap.userid, "must equal chap_user", f'write userid = "{chap_user}"')
    luns = s.ints("luns")
    s.finish()
    return Acl(initiator=initiator, chap=chap, chap_user=chap_user, luns=luns)


def _fencing(s: Section | None) -> Fencing:
    if s is None:
        return Fencing()
    f = Fencing(
        policy=s.str("policy", "first", choices=FENCE_POLICIES) or "first",
        on_key_lost=s.str("on_key_lost", "standby", choices=KEY_LOST_ACTIONS) or "standby",
        reservation_type=s.str("reservation_type", "write_exclusive_registrants_only",
                               choices=tuple(RESERVATION_TYPES)) or "write_exclusive_registrants_only",
        require_all_disks=s.bool("require_all_disks", True),
        standby_registers=s.bool("standby_registers", True),
    )
    s.finish()
    return f


PEER_KEY_MIN, PEER_KEY_MAX = 16, 128


def _peer_link(s: Section | None) -> PeerLink | None:
    if s is None:
        return None
    key = s.secret("key")
    if key is not None and not PEER_KEY_MIN <= len(key.reveal()) <= PEER_KEY_MAX:
        s.problem("key", "***", f"must be {PEER_KEY_MIN}–{PEER_KEY_MAX} characters",
                  "use the same long random string on both controllers, e.g. the output of `openssl rand -hex 24`")
    link = PeerLink(
        key=key or Secret(""),
        port=s.int("port", 7405, lo=1, hi=65535) or 7405,
        fast_takeover=bool(s.bool("fast_takeover", True)),
        failsafe=bool(s.bool("failsafe", True)),
    )
    s.finish()
    return link


def _network(s: Section | None) -> Network:
    if s is None:
        return Network()
    n = Network(
        garp_count=s.int("garp_count", 3, lo=1, hi=50),
        garp_interval_s=s.float("garp_interval_s", 0.05),
        garp_refresh_s=s.float("garp_refresh_s", 10.0),
        dad_timeout_s=s.float("dad_timeout_s", 0.2),
    )
    for key in ("garp_interval_s", "garp_refresh_s", "dad_timeout_s"):
        value = getattr(n, key)
        if isinstance(value, float) and value < 0:
            s.problem(key, value, "must not be negative", "use 0 to disable, or a positive number of seconds")
    s.finish()
    return n
