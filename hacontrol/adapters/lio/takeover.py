"""Port takeover on LIO: present the (fenced) peer's target port here, and hand it back.

Every controller always defines the peer's TPG (the peer's tag, relative port id, LUNs in the peer's ALUA
group, ACLs, CHAP, portals on the peer's addresses), **disabled**. Adopting it is therefore three small steps,
in this order so that an initiator's first new connection finds everything ready:

1. the peer's ALUA group here -> Active/Optimized (one LU-group write);
2. enable the peer's TPG (its portals were bound all along, thanks to non-local bind);
3. add the peer's portal addresses (``NetworkPort.claim``: duplicate-address check, add, gratuitous ARP); the
   initiators' next segment on an old connection then meets a TCP reset here and they log in again.

A failure undoes what was done (addresses released, TPG disabled, group state restored) and raises.
Handing back reverses it: group -> Transitioning, TPG disabled (LIO drops its sessions), addresses released
(connections cut, addresses removed), group -> Standby. The measured durations are in docs/lio.md.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from hacontrol.agent.protocols import AdapterError, ManagedAddress, NetworkPort
from hacontrol.config.schema import Config
from hacontrol.core.model import AluaState

from .snapshot import read_text

log = structlog.get_logger("hacontrol.lio")
AO, STANDBY = AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY


class PortMoves:
    """Mixed into LioPort; relies on its cfg, node, network, root, clock, set_alua and state readers."""

    cfg: Config
    node: str
    network: NetworkPort | None
    root: Path
    clock: Callable[[], float]
    _desired: Any
    _applied: bool
    address_check_s: float = 1.0
    handback_drain_s: float = 0.3  # after the adopted group went Standby, before its TPG and addresses go
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    _present_cache: tuple[float, frozenset[str]] | None = None

    # provided by LioPort
    def set_alua(self, own: AluaState, peer: AluaState, deadline: float) -> None: ...
    def _read_states(self) -> tuple[AluaState, AluaState]: ...
    def _bump(self) -> None: ...

    # -- addresses and TPGs -------------------------------------------------------------------------------------

    def _managed(self, node_name: str) -> list[ManagedAddress]:
        return [ManagedAddress(p.address, p.interface) for p in self.cfg.node(node_name).portals]

    def _peer_name(self) -> str:
        return self.cfg.peer_of(self.node).name

    def _tpg_paths(self, role: str) -> list[Path]:
        desired = self._desired
        if desired is None:
            return []
        return [self.root / "iscsi" / dt.iqn / f"tpgt_{t.tag}" for dt in desired.targets
                if (t := dt.tpg(role)) is not None]

    def _set_enabled(self, paths: list[Path], enabled: bool) -> list[Path]:
        """Write enable where it differs; returns the TPGs changed."""
        changed = []
        for path in paths:
            if (read_text(path / "enable") == "1") == enabled:
                continue
            try:
                with open(path / "enable", "w") as f:
                    f.write("1" if enabled else "0")
            except OSError as exc:
                raise AdapterError(f"{'enabling' if enabled else 'disabling'} {path.parent.name} "
                                   f"{path.name}: {exc.strerror}") from None
            changed.append(path)
        return changed

    def _present(self) -> frozenset[str]:
        """Which managed portal addresses (own and peer's) are here. A netlink dump costs ~40 ms on a small
        controller, so it is done at most every ``address_check_s`` (and at once after our own moves)."""
        if self.network is None:
            return frozenset()
        now = self.clock()
        if self._present_cache is None or now - self._present_cache[0] >= self.address_check_s:
            addresses = self._managed(self.node) + self._managed(self._peer_name())
            self._present_cache = (now, self.network.present(addresses) if addresses else frozenset())
        return self._present_cache[1]

    def _forget_present(self) -> None:
        self._present_cache = None

    def own_ports_up(self) -> bool:
        addresses = self._managed(self.node)
        if self.network is None or not addresses:
            return True  # static portals: nothing moves
        return self._present() >= {a.key for a in addresses}

    def peer_ports_hosted(self) -> bool:
        """Any trace of the peer's port here (its TPG enabled or one of its addresses): a step-down releases it."""
        if any(read_text(p / "enable") == "1" for p in self._tpg_paths("peer")):
            return True
        return bool(self._present() & {a.key for a in self._managed(self._peer_name())})

    # -- the moves ----------------------------------------------------------------------------------------------

    def adopt_peer(self, epoch: int, deadline: float) -> None:
        addresses = self._managed(self._peer_name())
        if self.network is None or not addresses:
            raise AdapterError("port takeover needs the peer's [[node.portal]] addresses and a network adapter")
        if not self._applied:
            raise AdapterError("the target is not configured here yet: cannot present the peer's port")
        started = self.clock()
        own, peer_before = self._read_states()
        times: dict[str, float] = {}
        enabled: list[Path] = []
        claimed: list[ManagedAddress] = []
        try:
            self.set_alua(own, AO, deadline)
            times["alua_s"] = self.clock() - started
            self._bump()
            enabled = self._set_enabled(self._tpg_paths("peer"), True)
            times["tpg_s"] = self.clock() - started
            for address in addresses:
                self.network.claim(address, deadline, check_duplicates=True)
                claimed.append(address)
            times["addresses_s"] = self.clock() - started
        except AdapterError as exc:
            self._undo_adopt(claimed, enabled, own, peer_before, deadline)
            log.error("lio_adopt_failed", node=self.node, epoch=epoch, error=str(exc))
            raise AdapterError(f"adopting {self._peer_name()}'s port failed and was undone: {exc}") from None
        self._forget_present()
        log.info("lio_adopt", node=self.node, peer=self._peer_name(), epoch=epoch,
                 **{k: round(v, 4) for k, v in times.items()}, total_s=round(self.clock() - started, 4))

    def _undo_adopt(self, claimed: list[ManagedAddress], enabled: list[Path], own: AluaState,
                    peer_before: AluaState, deadline: float) -> None:
        assert self.network is not None
        undo_deadline = max(deadline, self.clock() + 2.0)  # undo even if the step ran out of time
        for address in reversed(claimed):
            try:
                self.network.release(address, undo_deadline)
            except AdapterError as exc:
                log.error("lio_adopt_undo", address=address.key, error=str(exc))
        try:
            self._set_enabled(enabled, False)
            self.set_alua(own, peer_before, undo_deadline)
        except AdapterError as exc:
            log.error("lio_adopt_undo", error=str(exc))
        self._forget_present()

    def release_peer(self, deadline: float) -> None:
        started = self.clock()
        own, _ = self._read_states()
        # Standby first, not Transitioning: an initiator's ALUA handler retries a Transitioning path in place
        # (and a command caught there when the TPG goes waits out the recovery timeout, 3 s and more in the
        # rig), while Standby (02/04/0B) makes multipath send it down the Active/Optimized path at once.
        self.set_alua(own, STANDBY, deadline)
        self.sleep(max(0.0, min(self.handback_drain_s, deadline - self.clock() - 0.2)))  # in-flight I/O drains
        self._bump()
        self._set_enabled(self._tpg_paths("peer"), False)  # LIO closes the sessions of a disabled TPG
        try:
            if self.network is not None:
                for address in self._managed(self._peer_name()):
                    self.network.release(address, deadline)
        finally:
            self._forget_present()
        self.set_alua(own, STANDBY, deadline)
        log.info("lio_release_peer", node=self.node, peer=self._peer_name(),
                 duration_s=round(self.clock() - started, 4))

    def bring_up_own(self, deadline: float) -> None:
        if self._applied:
            self._set_enabled(self._tpg_paths("own"), True)
        if self.network is None:
            return
        try:
            for address in self._managed(self.node):
                self.network.claim(address, deadline, check_duplicates=True)
        finally:
            self._forget_present()
        log.info("lio_own_ports_up", node=self.node)

    def take_down_own(self, deadline: float) -> None:
        """Remove our own portal addresses (connections on them are cut first). The own TPG stays enabled: with
        its addresses gone nothing reaches it, and bringing the ports up again only has to add them."""
        if self.network is None:
            return
        try:
            for address in self._managed(self.node):
                self.network.release(address, deadline)
        finally:
            self._forget_present()
        log.info("lio_own_ports_down", node=self.node)

    def cut_connections(self, address: str, deadline: float) -> None:
        """Abort the target's TCP connections on one local address (SOCK_DESTROY; LIO's sessions then end).

        VIPs hold only discovery portals here, so this is usually a no-op; it matters for anything that still
        connected to an address that is about to leave."""
        from hacontrol.adapters.network.sockdiag import SockDiag  # pyroute2: controllers only

        ip = ipaddress.ip_interface(address).ip
        ports = {t.port for t in self.cfg.targets} or {3260}
        try:
            with SockDiag(None, deadline) as diag:
                cut = sum(diag.destroy(s) for s in diag.connections(ip, ports))
        except AdapterError as exc:
            log.warning("lio_cut_failed", address=str(ip), error=str(exc))
            return
        log.info("lio_cut_connections", address=str(ip), connections_cut=cut)
