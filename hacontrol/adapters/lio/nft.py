"""``allowed_networks``: nftables rules on this controller's portals (LIO has no IP ACLs).

**Library**: libnftables, the library the ``nft`` command is built on, through ctypes. Its official Python
binding (Debian's python3-nftables) is itself a ctypes wrapper around the same five functions and is neither
on PyPI nor in the controller image, while libnftables1 is always there with nftables; pyroute2's nftables
support cannot express sets with intervals and ``reject``. A whole ruleset change is one
``nft_run_cmd_from_buffer`` call, which the kernel applies as one transaction (all or nothing).

The table ``inet hacontrol_lio`` holds, per iSCSI port that has ``allowed_networks``: a set of every portal
address this controller may listen on (its own, the peer's it may adopt, the VIPs), a set of the allowed
networks, and a rule that answers a connection to such a portal from anywhere else with a TCP reset (a quick,
unambiguous refusal; no iSCSI byte is exchanged). The table carries a comment with a digest of its content,
so an unchanged configuration touches nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hacontrol.agent.protocols import AdapterError

TABLE = "hacontrol_lio"
_OUTPUT_JSON = 1 << 4
_COMMENT = re.compile(r'comment "hacontrol ([0-9a-f]+)"')


class NftError(AdapterError):
    pass


@dataclass(frozen=True)
class PortFilter:
    port: int
    portals: tuple[str, ...]  # addresses
    allowed: tuple[str, ...]  # networks


def filters(port_portals: Mapping[int, Iterable[str]], port_networks: Mapping[int, Iterable[str]]
            ) -> tuple[PortFilter, ...]:
    """One filter per port that has allowed networks (ports without any are left open)."""
    out = []
    for port in sorted(port_networks):
        nets = tuple(sorted({str(ipaddress.ip_network(n, strict=False)) for n in port_networks[port]}))
        if nets:
            portals = tuple(sorted(set(port_portals.get(port, ())), key=_address_key))
            out.append(PortFilter(port, portals, nets))
    return tuple(out)


def _address_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def _elements(values: Iterable[str]) -> str:
    values = list(values)
    return f"elements = {{ {', '.join(values)} }}; " if values else ""


def render(rules: tuple[PortFilter, ...]) -> str:
    """The nft script that replaces the table in one transaction (deletes it when there are no rules)."""
    head = f"add table inet {TABLE}\ndelete table inet {TABLE}\n"
    if not rules:
        return head
    body = [f"table inet {TABLE} {{", f'  comment "hacontrol {digest(rules)}"']
    chain = ["  chain input {", "    type filter hook input priority filter - 10; policy accept;"]
    for r in rules:
        for family, addr_type, match in (("4", "ipv4_addr", "ip"), ("6", "ipv6_addr", "ip6")):
            portals = [a for a in r.portals if ipaddress.ip_address(a).version == int(family)]
            nets = [n for n in r.allowed if ipaddress.ip_network(n).version == int(family)]
            if not portals:
                continue
            body.append(f"  set portals{family}_{r.port} {{ type {addr_type}; {_elements(portals)}}}")
            body.append(f"  set allowed{family}_{r.port} {{ type {addr_type}; flags interval; {_elements(nets)}}}")
            chain.append(f"    tcp dport {r.port} {match} daddr @portals{family}_{r.port} "
                         f"{match} saddr != @allowed{family}_{r.port} reject with tcp reset")
    chain.append("  }")
    return head + "\n".join([*body, *chain, "}"]) + "\n"


def digest(rules: tuple[PortFilter, ...]) -> str:
    return hashlib.sha256(repr(rules).encode()).hexdigest()[:16]


class Nftables:
    """A libnftables context (ctypes). Not thread-safe; one per adapter."""

    def __init__(self, library: str | None = None):
        name = library or ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise NftError(f"cannot load libnftables ({exc}); install the nftables package "
                           "(allowed_networks needs it)") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib

    def run(self, script: str, json_output: bool = False) -> str:
        lib = self._lib
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        try:
            lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON if json_output else 0)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
        finally:
            lib.nft_ctx_free(ctx)
        if rc != 0:
            raise NftError(f"nftables refused the change: {err.splitlines()[0] if err else f'error {rc}'}")
        return out

    def current(self) -> tuple[str | None, str]:
        """(the digest in our table's comment, "" if it has none, None without the table; the table's text)."""
        try:
            text = self.run(f"list table inet {TABLE}")
        except NftError:
            return None, ""
        found = _COMMENT.search(text)
        return (found.group(1) if found else ""), text

    def replace(self, rules: tuple[PortFilter, ...]) -> tuple[bool, str]:
        """Make the table what ``rules`` say; returns (changed, script that restores the previous table)."""
        have, previous = self.current()
        want = digest(rules) if rules else None
        if have == want or (have is None and want is None):
            return False, ""
        self.run(render(rules))
        undo = f"add table inet {TABLE}\ndelete table inet {TABLE}\n" + (previous if have is not None else "")
        return True, undo
