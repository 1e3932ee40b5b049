"""Builders for the tgtadm commands the adapter sends: one function per tgtadm operation."""

from __future__ import annotations

import ipaddress

from hacontrol.config.schema import Secret

from .desired import ALL
from .tgtadm import Command


def show_targets() -> Command:
    return Command(("--mode", "target", "--op", "show"))


def show_accounts() -> Command:
    return Command(("--mode", "account", "--op", "show"))


def show_system() -> Command:
    return Command(("--mode", "sys", "--op", "show"))


def show_portals() -> Command:
    return Command(("--mode", "portal", "--op", "show"))


def show_connections(tid: int) -> Command:
    return Command(("--mode", "conn", "--op", "show", "--tid", str(tid)))


def delete_connection(tid: int, sid: int, cid: int) -> Command:
    return Command(("--mode", "conn", "--op", "delete", "--tid", str(tid), "--sid", str(sid), "--cid", str(cid)))


def new_target(tid: int, iqn: str) -> Command:
    return Command(("--mode", "target", "--op", "new", "--tid", str(tid), "--targetname", iqn))


def delete_target(tid: int, force: bool = False) -> Command:
    return Command(("--mode", "target", "--op", "delete", *(("--force",) if force else ()), "--tid", str(tid)))


def set_target_state(tid: int, state: str) -> Command:
    return Command(("--mode", "target", "--op", "update", "--tid", str(tid), "--name", "state", "--value", state))


def new_lun(tid: int, lun: int, path: str) -> Command:
    return Command(("--mode", "logicalunit", "--op", "new", "--tid", str(tid), "--lun", str(lun),
                    "--backing-store", path, "--bstype", "rdwr"))


def update_lun(tid: int, lun: int, params: tuple[str, ...]) -> Command:
    return Command(("--mode", "logicalunit", "--op", "update", "--tid", str(tid), "--lun", str(lun),
                    "--params", ",".join(params)))


def delete_lun(tid: int, lun: int) -> Command:
    return Command(("--mode", "logicalunit", "--op", "delete", "--tid", str(tid), "--lun", str(lun)))


def is_address_entry(entry: str) -> bool:
    """tgt lists address ACLs (ALL, addresses, networks) and initiator-name ACLs together."""
    if entry == ALL:
        return True
    try:
        ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return False
    return True


def acl(tid: int, entry: str, bind: bool) -> Command:
    option = "--initiator-address" if is_address_entry(entry) else "--initiator-name"
    return Command(("--mode", "target", "--op", "bind" if bind else "unbind", "--tid", str(tid), option, entry))


def new_account(user: str, secret: Secret) -> Command:
    return Command(("--mode", "account", "--op", "new", "--user", user), password=secret)


def delete_account(user: str) -> Command:
    return Command(("--mode", "account", "--op", "delete", "--user", user))


def account_binding(tid: int | None, user: str, outgoing: bool, bind: bool) -> Command:
    """Bind or unbind an account; ``tid`` None is the discovery (SendTargets) session of the whole tgtd."""
    where = ("--tid", str(tid)) if tid is not None else ()
    direction = ("--outgoing",) if outgoing else ()
    return Command(("--mode", "account", "--op", "bind" if bind else "unbind", *where, "--user", user, *direction))
