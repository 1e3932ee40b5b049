"""The configured target model as tgt can hold it, and the checks that refuse what tgt cannot do.

Mapping decisions (each one because of how tgt 1.0.85 behaves, measured here):

* **LUN 0 is refused.** tgt creates LUN 0 as its own "controller" device with
  every target; ``logicalunit --op new --lun 0`` answers "this logical unit
  number already exists" and ``--op delete --lun 0`` "invalid request" (the
  daemon deletes LUN 0 only when forced, and tgtadm never forces it).
  Silently shifting LUN ids would give initiators other LUN numbers than the
  configuration says, so a LUN with id 0 is a configuration error for tgt.
* **Identity.** ``scsi_sn`` is the configured serial (VPD 0x80, at most 36
  characters in tgt). ``scsi_id`` is the configured NAA without "naa.": tgt
  builds its NAA IEEE Registered Extended designator (VPD 0x83) from the hex
  digits of scsi_id, so both controllers, and LIO, present the same NAA.
* **ACLs are OR-ed in tgt** (``usr/iscsi/iscsid.c``: a login is refused only
  when both the address list and the name list fail). With initiator ACLs the
  adapter binds the names only: binding ``allowed_networks`` as well would let
  any host of those networks in. Without initiator ACLs the networks are bound
  (or ALL when CHAP guards the target and no network is given).
* **CHAP accounts are per target, not per initiator**, and one outgoing
  (mutual) account per target: per-ACL secrets become target accounts, and
  configurations tgt would silently weaken or break are refused.
* **Discovery CHAP is supported**: an account bound without a target id
  guards SendTargets for the whole tgtd.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from hacontrol.adapters.targets import backend_problems
from hacontrol.config.schema import Chap, Config, IPNetwork, Lun, Secret, Target
from hacontrol.core.problems import Problem

from .snapshot import CONTROLLER_LUN, TgtSnapshot

VENDOR_ID = "HACTRL"  # INQUIRY vendor (8 characters at most in tgt)
PRODUCT_ID_MAX = 16
SCSI_SN_MAX = 36  # SCSI_SN_LEN in tgt's tgtd.h: longer serials are cut
ALL = "ALL"
# Caching mode page (8) exactly as tgt's sbc_lu_init builds it, with WCE (0x04 of the first byte) set or not.
# tgt honours it per write: with WCE clear every WRITE is followed by fdatasync() (bs_rdwr.c).
_CACHING_PAGE = "8:0:18:{}:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0"
MODE_PAGE_WCE_ON = _CACHING_PAGE.format("0x14")
MODE_PAGE_WCE_OFF = _CACHING_PAGE.format("0x10")


@dataclass(frozen=True)
class LunExtras:
    """LUN settings tgtadm accepts but never shows: the adapter remembers what it set."""

    vendor_id: str
    product_id: str
    write_cache: bool

    def params(self) -> tuple[str, ...]:
        page = MODE_PAGE_WCE_ON if self.write_cache else MODE_PAGE_WCE_OFF
        return (f"vendor_id={self.vendor_id}", f"product_id={self.product_id}", f"mode_page={page}")


@dataclass(frozen=True)
class DesiredLun:
    lun: int
    path: str
    scsi_id: str
    scsi_sn: str
    thin: bool
    extras: LunExtras


@dataclass(frozen=True)
class DesiredTarget:
    iqn: str
    port: int
    luns: tuple[DesiredLun, ...] = ()
    acl: tuple[str, ...] = ()
    incoming: tuple[str, ...] = ()
    outgoing: str | None = None


@dataclass(frozen=True)
class DesiredAccount:
    user: str
    secret: Secret
    fingerprint: str = field(repr=False)  # keyed hash of the secret: compared, never shown


@dataclass(frozen=True)
class Desired:
    targets: tuple[DesiredTarget, ...] = ()
    accounts: tuple[DesiredAccount, ...] = ()
    discovery_incoming: tuple[str, ...] = ()
    discovery_outgoing: str | None = None

    def account(self, user: str) -> DesiredAccount | None:
        return next((a for a in self.accounts if a.user == user), None)


Fingerprint = Callable[[Secret], str]


def fingerprinter(key: bytes | None = None) -> Fingerprint:
    """A keyed hash of secrets (a fresh random key per adapter instance unless given)."""
    key = key if key is not None else os.urandom(32)
    return lambda secret: hmac.new(key, secret.reveal().encode(), hashlib.sha256).hexdigest()


def desired_state(cfg: Config, fingerprint: Fingerprint) -> Desired:
    """The tgt objects ``cfg`` asks for. Call :func:`problems` first: this assumes a valid configuration."""
    accounts: dict[str, Secret] = {}
    targets = tuple(_target(t, accounts) for t in cfg.targets)
    disc_in: tuple[str, ...] = ()
    disc_out = None
    if cfg.discovery_chap is not None:
        disc_in = (cfg.discovery_chap.userid,)
        disc_out = _remember(cfg.discovery_chap, accounts)
    return Desired(targets=targets, discovery_incoming=disc_in, discovery_outgoing=disc_out,
                   accounts=tuple(DesiredAccount(u, s, fingerprint(s)) for u, s in accounts.items()))


def _remember(chap: Chap, accounts: dict[str, Secret]) -> str | None:
    """Record the accounts of one CHAP block; return its mutual (outgoing) user."""
    accounts.setdefault(chap.userid, chap.secret)
    if chap.mutual_userid is not None and chap.mutual_secret is not None:
        accounts.setdefault(chap.mutual_userid, chap.mutual_secret)
        return chap.mutual_userid
    return None


def _target(t: Target, accounts: dict[str, Secret]) -> DesiredTarget:
    chaps = [c for c in (t.chap, *(a.chap for a in t.acls)) if c is not None]
    incoming: list[str] = []
    outgoing = None
    for chap in chaps:
        outgoing = _remember(chap, accounts) or outgoing
        if chap.userid not in incoming:
            incoming.append(chap.userid)
    luns = tuple(_lun(lun) for lun in sorted(t.luns, key=lambda x: x.id))
    return DesiredTarget(iqn=t.iqn, port=t.port, luns=luns, acl=acl_entries(t), incoming=tuple(incoming),
                         outgoing=outgoing)


def _lun(lun: Lun) -> DesiredLun:
    return DesiredLun(lun=lun.id, path=lun.device, scsi_id=lun.naa.removeprefix("naa."), scsi_sn=lun.serial,
                      thin=thin_provisioning(lun),
                      extras=LunExtras(VENDOR_ID, lun.name[:PRODUCT_ID_MAX], lun.write_cache))


def thin_provisioning(lun: Lun) -> bool:
    """tgt has one switch for UNMAP, WRITE SAME with UNMAP and the LBP VPD page."""
    return lun.thin and (lun.vaai.unmap or lun.vaai.write_same)


def acl_entries(t: Target) -> tuple[str, ...]:
    """What to bind as tgt ACLs (see the module docstring for why names and networks are not both bound)."""
    names = tuple(a.initiator for a in t.acls if a.initiator)
    if names:
        return names
    networks = tuple(dict.fromkeys(tgt_address_acl(n) for n in t.allowed_networks))
    if networks:
        return (ALL,) if ALL in networks else networks
    chap_guarded = t.chap is not None or any(a.chap_user for a in t.acls)
    return (ALL,) if chap_guarded else ()


def tgt_address_acl(network: IPNetwork) -> str:
    """How tgt must be told a network so that it matches what the network means.

    tgt 1.0.85 (``netmask_match``) never matches a /32 (or /128) prefix and
    computes ``1 << 32`` for /0, so a single host is bound as a bare address
    and the whole address space as ALL (measured: 10.77.0.3/32 refused 10.77.0.3).
    """
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    if network.prefixlen == 0:
        return ALL
    return str(network)


def problems(cfg: Config, node: str | None) -> list[Problem]:
    """Everything in ``cfg`` that tgt cannot do as configured (pure: no file system access)."""
    p = backend_problems(cfg, node, "tgt")
    for ti, t in enumerate(cfg.targets):
        p.extend(_target_problems(f"target[{ti}]", t))
    p.extend(_account_problems(cfg))
    return p


def _target_problems(key: str, t: Target) -> list[Problem]:
    p: list[Problem] = []
    for li, lun in enumerate(t.luns):
        p.extend(_lun_problems(f"{key}.lun[{li}]", lun))
    all_ids = {lun.id for lun in t.luns}
    for ai, acl in enumerate(t.acls):
        if acl.luns is not None and set(acl.luns) != all_ids:
            p.append(Problem(f"{key}.acl[{ai}].luns", list(acl.luns), "tgt cannot hide LUNs from one initiator: "
                             "every initiator admitted to a target sees all its LUNs",
                             "remove luns from the ACL, or put the LUNs this host may see in a target of their own"))
    mutuals = {(c.mutual_userid, c.mutual_secret.reveal()) for c in (t.chap, *(a.chap for a in t.acls))
               if c is not None and c.mutual_userid is not None and c.mutual_secret is not None}
    if len(mutuals) > 1:
        p.append(Problem(f"{key}.acl.auth.mutual_userid", sorted(u for u, _ in mutuals),
                         "tgt presents one mutual-CHAP identity per target",
                         "give every ACL of this target the same mutual_userid and mutual_secret, or set them only "
                         "in [target.auth]"))
    has_chap = t.chap is not None or any(a.chap is not None for a in t.acls)
    for ai, acl in enumerate(t.acls):
        if has_chap and t.chap is None and acl.chap is None:
            p.append(Problem(f"{key}.acl[{ai}].auth", None, "once any CHAP account is bound to a tgt target, every "
                             "initiator of that target must log in with CHAP, so this initiator would be locked out",
                             "give this ACL its own [target.acl.auth], or add a target-wide [target.auth]"))
    return p


def _lun_problems(key: str, lun: Lun) -> list[Problem]:
    p: list[Problem] = []
    if lun.id == CONTROLLER_LUN:
        p.append(Problem(f"{key}.id", lun.id, "tgt reserves LUN 0 for its controller device in every target "
                         "and cannot replace it", "number the LUNs of a tgt target from 1"))
    if len(lun.serial) > SCSI_SN_MAX:
        p.append(Problem(f"{key}.serial", lun.serial, f"tgt keeps at most {SCSI_SN_MAX} characters of a serial",
                         "use a serial of 36 characters or fewer, e.g. a uuid without dashes (32)"))
    for field_name, value in (("serial", lun.serial), ("device", lun.device)):
        if "," in value:
            p.append(Problem(f"{key}.{field_name}", value, "contains a comma, which tgtadm uses to separate "
                             "parameters", "remove the comma"))
    return p


def _account_problems(cfg: Config) -> list[Problem]:
    """tgt accounts are global to the daemon: one user name, one secret, wherever it is used."""
    p: list[Problem] = []
    seen: dict[str, str] = {}
    blocks = [("iscsi.discovery_auth", cfg.discovery_chap)]
    for ti, t in enumerate(cfg.targets):
        blocks.append((f"target[{ti}].auth", t.chap))
        blocks.extend((f"target[{ti}].acl[{ai}].auth", a.chap) for ai, a in enumerate(t.acls))
    for key, chap in blocks:
        if chap is None:
            continue
        pairs = [("userid", chap.userid, chap.secret), ("mutual_userid", chap.mutual_userid, chap.mutual_secret)]
        for name, user, secret in pairs:
            if user is None or secret is None:
                continue
            if "," in user:
                p.append(Problem(f"{key}.{name}", user, "contains a comma, which tgtadm cannot pass",
                                 "choose a user name without commas"))
            if seen.setdefault(user, secret.reveal()) != secret.reveal():
                p.append(Problem(f"{key}.{name}", user, "the same CHAP user has another secret elsewhere in this "
                                 "file, and tgt keeps one secret per user name for the whole daemon",
                                 "use one secret per user name, or different user names"))
    return p


def filesystem_problems(cfg: Config) -> list[Problem]:
    """Backing stores that tgtd could not open: checked before anything is changed."""
    p: list[Problem] = []
    for ti, t in enumerate(cfg.targets):
        for li, lun in enumerate(t.luns):
            message = backing_store_error(lun.device)
            if message:
                p.append(Problem(f"target[{ti}].lun[{li}].device", lun.device, message,
                                 "create the file or device, or correct the path"))
    return p


def backing_store_error(path: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        return "is neither a regular file nor a block device"
    if not os.access(path, os.R_OK | os.W_OK):
        return "is not readable and writable (tgtd opens backing stores read-write)"
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return "is empty (a zero-sized LUN)"
    return None


def portal_problems(cfg: Config, snapshot: TgtSnapshot) -> list[Problem]:
    """Targets whose port tgtd does not listen on would be configured yet unreachable."""
    ports = {port for _, port in snapshot.portals}
    return [Problem(f"target[{ti}].port", t.port, f"tgtd listens on no portal with this port (it has "
                    f"{sorted(ports) or 'none'}; portals belong to tgtd, not to a target)",
                    f"start tgtd with --iscsi portal=ADDRESS:{t.port}, or set port to one tgtd listens on")
            for ti, t in enumerate(cfg.targets) if t.port not in ports]


def warnings(cfg: Config) -> list[Problem]:
    """Legal for tgt, but not what LIO would do: reported, not refused."""
    w: list[Problem] = []
    for ti, t in enumerate(cfg.targets):
        key = f"target[{ti}]"
        if any(a.initiator for a in t.acls) and t.allowed_networks:
            w.append(Problem(f"{key}.allowed_networks", [str(n) for n in t.allowed_networks],
                             "not bound as tgt ACLs: tgt admits an initiator that matches a name OR an address, "
                             "so the initiator-name ACLs alone are bound", "enforce the networks with nftables"))
        if not acl_entries(t):
            w.append(Problem(f"{key}.acl", [], "no ACL, network or CHAP admits any initiator to this target",
                             "add [[target.acl]] entries, allowed_networks or [target.auth]"))
        if len([a for a in t.acls if a.chap]) > 1 or (t.chap and any(a.chap for a in t.acls)):
            w.append(Problem(f"{key}.acl.auth", None, "tgt accepts every account of a target from every admitted "
                             "initiator (accounts are not tied to one initiator name)",
                             "use one target per host if that matters"))
        for li, lun in enumerate(t.luns):
            if lun.vaai.ats or lun.vaai.xcopy:
                w.append(Problem(f"{key}.lun[{li}].vaai", "ats/xcopy", "tgt implements neither COMPARE AND WRITE "
                                 "nor EXTENDED COPY", "set ats = false and xcopy = false to say so"))
    return w
