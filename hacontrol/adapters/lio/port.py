"""LioPort: the agent's TargetPort and PortMover on LIO (see the package docstring for the topology).

Per tick, ``observe()`` reads a handful of configfs files: for each target the enable flag and LUN count of
this controller's TPG and the enable flag of the peer's, and the two ALUA group states of one storage object
(the LU group keeps them all equal). Everything else is cached: the last full snapshot (refreshed in the
background after every change and every ``recheck_s``, which is also how drift is found) and the capacity
readings (every ``capacity_every_s``) and the initiators' persistent reservations per LUN (every
``reservations_every_s``, ``reservations.py``).

``configure()`` is one transaction per call (``apply.py``). On a controller that serves I/O it honours the
executor's deadline, stopping between units and continuing on the next call; on one that does not (starting,
standby) it runs up to ``standby_budget_s``, since blocking a tick there costs nothing. A missing snapshot is
read inline when not serving, and in the background otherwise (the call then returns without changes).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from hacontrol.adapters.targets import refuse
from hacontrol.agent.protocols import AdapterError, ManagedAddress, NetworkPort
from hacontrol.config.schema import Config
from hacontrol.core.model import AluaState, DataPath

from . import capacity as cap
from . import names
from . import reservations as pr
from .alua import AluaControl
from .apply import ApplyFailed, ApplyResult, Writer, apply_units
from .background import Worker
from .desired import (
    desired_state,
    force_write_through,
    host_problems,
    host_warnings,
    portal_addresses,
    problems,
)
from .model import Desired, LioSnapshot
from .nft import Nftables, filters
from .plan import Unit, plan, step_count
from .prstore import PrStore
from .prsync import PrSync
from .snapshot import CONFIGFS, PROC_SYS, Reader, read_text
from .takeover import PortMoves

log = structlog.get_logger("hacontrol.lio")
STANDBY = AluaState.STANDBY


class LioPort(PortMoves):
    """``TargetPort`` + ``PortMover`` for one controller. ``network`` adds and removes portal addresses."""

    def __init__(self, cfg: Config, node: str, network: NetworkPort | None = None, *,
                 root: str | Path = CONFIGFS, proc: str | Path = PROC_SYS, writer: Writer | None = None,
                 nft: Any = None, clock: Callable[[], float] = time.monotonic, recheck_s: float = 60.0,
                 capacity_every_s: float = 30.0, standby_budget_s: float = 120.0,
                 reservations_every_s: float = 5.0,
                 capacity_reader: Callable[..., list[cap.CapacityReading]] = cap.read_capacity,
                 background: bool = True, per_device_alua: bool = False,
                 check_devices: Callable[[Config], list[Any]] = host_problems,
                 pr_state_file: Path | None = None):
        from .writer import RtslibWriter  # deferred: tests inject a writer

        self.cfg, self.node, self.network = cfg, node, network
        self.root = Path(root)
        self.clock = clock
        self.recheck_s, self.capacity_every_s, self.standby_budget_s = recheck_s, capacity_every_s, standby_budget_s
        self.reservations_every_s = reservations_every_s
        self.per_device_alua = per_device_alua
        self._check_devices = check_devices
        self.on_capacity: Callable[[cap.CapacityReading], None] | None = None  # every reading with a ratio
        self.on_capacity_crossing: Callable[[], None] | None = None  # a LUN crossed its threshold (either way)
        self.on_reservations_changed: Callable[[], None] | None = None  # what reservations_report() shows changed
        self._reader = Reader(root, proc)
        self._writer: Writer = writer or RtslibWriter(root, proc)
        self._nft = nft
        self._alua = AluaControl(root, clock)
        self._worker = Worker(start_thread=background)
        self._capacity_reader = capacity_reader
        self._watch = cap.ThresholdWatch()
        self._capacity: list[cap.CapacityReading] = []
        self._generation = 0
        self._snap: LioSnapshot | None = None
        self._snap_generation = -1
        self._applied = False
        self._drift = False
        self._pending: tuple[Unit, ...] = ()
        self._pending_for: Desired | None = None
        self._view: tuple[AluaState, AluaState] | None = None  # (own, peer) as last set or read
        self._alua_changed_at: float | None = None
        self._last_check = self._last_capacity = self._last_reservations = -1e18
        self._reservations: list[pr.LunReservations] = []
        self._first_cache: Path | None = None
        self._so_paths: tuple[int, list[Path]] | None = None
        self._structure = 0  # bumped by every apply (objects may have come or gone); ALUA switches do not
        self._desired = self._build_desired()
        self.last_apply: ApplyResult | None = None  # the last apply's figures (benchmarks, diagnostics)
        self.prsync = PrSync(cfg, node, self.root, writer=self._writer, so_paths=self.so_paths,
                             reexport=self._reexport, nft=self._nft_now, state_file=pr_state_file)

    def __repr__(self) -> str:
        return f"LioPort(node={self.node!r}, targets={len(self.cfg.targets)}, root={str(self.root)!r})"

    # -- configuration -------------------------------------------------------------------------------------------

    def _build_desired(self) -> Desired | None:
        if problems(self.cfg, self.node):
            return None
        return desired_state(self.cfg, self.node)

    def update_config(self, cfg: Config) -> None:
        """A new configuration was distributed: observe reports not configured until ConfigureTarget applied it.

        One LIO refuses (e.g. LUN names repeated across targets) is not adopted: the running configuration stays
        in force, configured as it is. Adopting it would make every ConfigureTarget fail, and on the active
        controller that step comes before the watchdog kick."""
        found = problems(cfg, self.node)
        if found:
            log.error("lio_config_rejected", node=self.node, problems=[str(p) for p in found],
                      detail="the running configuration stays in force")
            return
        self.cfg = cfg
        self.prsync.cfg = cfg
        self._desired = self._build_desired()
        self._applied = False
        self._pending, self._pending_for = (), None

    def _bump(self) -> None:
        """Something changed LIO: cached snapshots (and background reads in flight) are stale."""
        self._generation += 1

    def configure(self, deadline: float) -> str:
        found = problems(self.cfg, self.node)
        if found:
            raise refuse("configuration not applicable to LIO", found)
        desired = self._desired or desired_state(self.cfg, self.node)
        serving = self._serving()
        budget = deadline if serving else max(deadline, self.clock() + self.standby_budget_s)
        if self._pending and self._pending_for == desired:
            units = list(self._pending)
            nft_undo = ""
        else:
            found = self._check_devices(self.cfg)
            if found:
                raise refuse(f"LIO on {self.node} cannot export the configured devices", found)
            for device in force_write_through(self.cfg):
                log.info("lio_write_through", device=device, why="write_cache = false: same caching mode on both "
                         "controllers")
            for w in host_warnings(self.cfg):
                log.warning("lio_config_warning", key=w.key, message=w.message, fix=w.fix)
            snap = self._snapshot_for_apply(serving)
            if snap is None:
                return "lio: reading the current LIO state in the background; applying on the next call"
            units = plan(desired, snap, self._alua_view(snap))
            self._writer_knows(snap)
            nft_undo = self._apply_nft()
        return self._run_units(desired, units, budget, nft_undo)

    def _run_units(self, desired: Desired, units: list[Unit], deadline: float, nft_undo: str) -> str:
        if not units:
            self._applied, self._drift = True, False
            self._pending, self._pending_for = (), None
            return "lio: already configured"
        self._bump()
        self._structure += 1
        batch = getattr(self._writer, "batch", None)
        try:
            with batch(step_count(units)) if batch is not None else contextlib.nullcontext():
                result = apply_units(self._writer, units, deadline, self.clock)
        except ApplyFailed:
            self._pending, self._pending_for, self._snap = (), None, None
            self._undo_nft(nft_undo)
            raise
        finally:
            self._bump()
        self.last_apply = result
        slowest = sorted(result.op_seconds.items(), key=lambda kv: -kv[1][1])[:4]
        log.info("lio_apply", node=self.node, steps=result.steps, units=result.units,
                 remaining_units=len(result.remaining), duration_s=round(result.duration_s, 3),
                 slowest_ops={k: [n, round(t, 3)] for k, (n, t) in slowest})
        if not result.complete:
            self._pending, self._pending_for = result.remaining, desired
            return (f"lio: {result.steps} step(s) applied, {step_count(list(result.remaining))} left for the next "
                    "call (deadline)")
        self._pending, self._pending_for = (), None
        self._applied, self._drift = True, False
        self._refresh_in_background()
        return f"lio: {result.steps} step(s) applied in {result.duration_s:.2f} s"

    def _snapshot_for_apply(self, serving: bool) -> LioSnapshot | None:
        self._consume_background()
        if self._snap is not None and self._snap_generation == self._generation:
            return self._snap
        if serving:
            self._refresh_in_background()
            self._consume_background()  # done already if the worker runs inline (tests)
            fresh = self._snap is not None and self._snap_generation == self._generation
            return self._snap if fresh else None
        self._snap, self._snap_generation = self._reader.snapshot(), self._generation
        return self._snap

    def _writer_knows(self, snap: LioSnapshot) -> None:
        known = getattr(self._writer, "known", None)
        if known is not None:
            known(snap)

    def _alua_view(self, snap: LioSnapshot) -> tuple[int, int]:
        """The states new ALUA groups get: the current view, else what LIO shows, else Standby/Standby."""
        if self._view is None:
            self._view = self._states_in(snap)
        return int(self._view[0]), int(self._view[1])

    def _states_in(self, snap: LioSnapshot) -> tuple[AluaState, AluaState]:
        desired = self._desired
        if desired is not None:
            for d in desired.storage:
                so = snap.storage.get(d.name)
                own, peer = (so.groups.get(g.name) if so else None for g in desired.groups)
                if own is not None and peer is not None:
                    return AluaState(own.state), AluaState(peer.state)
        return STANDBY, STANDBY

    # -- nftables ----------------------------------------------------------------------------------------------

    def nft_rules(self) -> tuple[Any, ...]:
        portals: dict[int, list[str]] = {}
        networks: dict[int, list[str]] = {}
        addresses = [*portal_addresses(self.cfg.node(self.node)), *portal_addresses(self.cfg.peer_of(self.node)),
                     *(str(v.address.ip) for v in self.cfg.vips)]
        for t in self.cfg.targets:
            portals.setdefault(t.port, []).extend(addresses)
            networks.setdefault(t.port, []).extend(str(n) for n in t.allowed_networks)
        return filters(portals, networks)

    def _nft_now(self) -> Any:
        """libnftables, loaded on first use (allowed_networks, and closing the ports while reservations load)."""
        if self._nft is None:
            self._nft = Nftables()
        return self._nft

    def _apply_nft(self) -> str:
        rules = self.nft_rules()
        if self._nft is None and not rules:
            return ""  # nothing to filter: do not even load libnftables
        changed, undo = self._nft_now().replace(rules)
        if changed:
            log.info("lio_nftables", node=self.node, ports=[r.port for r in rules])
        return undo

    def _undo_nft(self, undo: str) -> None:
        if undo and self._nft is not None:
            try:
                self._nft.run(undo)
            except AdapterError as exc:
                log.error("lio_nftables_rollback_failed", error=str(exc))

    # -- observation -------------------------------------------------------------------------------------------

    def observe(self) -> DataPath:
        self._consume_background()
        self._schedule_background()
        own, peer = self._read_states()
        self.prsync.set_serving(own.accepts_io)
        self.prsync.read_local()
        return DataPath(configured=self._configured_now(), own_group=own, peer_group=peer,
                        alua_changed_at=self._alua_changed_at, own_ports_up=self.own_ports_up(),
                        peer_ports_hosted=self.peer_ports_hosted(), pr_loaded_epoch=self.prsync.loaded_epoch,
                        pr_unpublished=self.prsync.unpublished())

    def _configured_now(self) -> bool:
        desired = self._desired
        if desired is None or not self._applied or self._drift or self._pending:
            return False
        for dt in desired.targets:
            own = dt.tpg("own")
            if own is None:
                continue
            path = self.root / "iscsi" / dt.iqn / f"tpgt_{own.tag}"
            if read_text(path / "enable") != "1" or _lun_count(path) != len(own.luns):
                return False
        return True

    def so_paths(self) -> list[Path]:
        """configfs directories of the configured storage objects that exist (ALUA reads and switches).
        Cached until the adapter changes LIO again: globbing 1,000 backstores costs ~90 ms here."""
        if self._so_paths is not None and self._so_paths[0] == self._structure:
            return self._so_paths[1]
        desired = self._desired
        if desired is None:
            return []
        found = {p.name: p for p in (self.root / "core").glob(f"*_*/{names.OWNED_PREFIX}*")}
        paths = [found[d.name] for d in desired.storage if d.name in found]
        self._so_paths = (self._structure, paths)
        return paths

    def _group_names(self) -> tuple[str, str]:
        return names.group_name(self.cfg.node(self.node)), names.group_name(self.cfg.peer_of(self.node))

    def _read_states(self) -> tuple[AluaState, AluaState]:
        first = self._first_so()
        if first is not None:
            own_name, peer_name = self._group_names()
            own, peer = self._alua.state(first, own_name), self._alua.state(first, peer_name)
            if own is not None and peer is not None:
                if self._view is None:
                    self._view = (own, peer)
                return own, peer
        return self._view or (STANDBY, STANDBY)

    def _first_so(self) -> Path | None:
        desired = self._desired
        if desired is None or not desired.storage:
            return None
        if self._first_cache is None or not self._first_cache.exists():
            paths = self.so_paths()
            self._first_cache = paths[0] if paths else None
        return self._first_cache

    def _serving(self) -> bool:
        own, _ = self._read_states()
        return own.accepts_io or self.peer_ports_hosted()

    # -- ALUA ----------------------------------------------------------------------------------------------------

    def set_alua(self, own: AluaState, peer: AluaState, deadline: float) -> None:
        started = self.clock()
        before = self._read_states()
        own_name, peer_name = self._group_names()
        changes = [(g, s) for g, s, b in ((own_name, own, before[0]), (peer_name, peer, before[1])) if s != b]
        writes = 0
        if changes:
            paths = self.so_paths()
            self._bump()
            writes = self._alua.switch(paths, changes, deadline, per_device=self.per_device_alua)
        self.prsync.set_serving(own.accepts_io)
        if own != before[0]:
            self._alua_changed_at = self.clock()
        self._view = (own, peer)
        log.info("lio_alua", node=self.node, own=own.label, peer=peer.label, writes=writes,
                 luns=len(self._desired.storage) if self._desired else 0,
                 duration_s=round(self.clock() - started, 4))

    # -- background work -----------------------------------------------------------------------------------------

    def _refresh_in_background(self) -> None:
        generation, desired = self._generation, self._desired
        view = self._view or (STANDBY, STANDBY)

        def job() -> tuple[LioSnapshot, bool]:
            snap = self._reader.snapshot()
            drift = bool(desired is not None and plan(desired, snap, (int(view[0]), int(view[1]))))
            return snap, drift

        if self._worker.submit("snapshot", generation, job):
            self._last_check = self.clock()

    def _schedule_background(self) -> None:
        now = self.clock()
        if self._applied and not self._pending and now - self._last_check >= self.recheck_s:
            self._refresh_in_background()
        if self.cfg.targets and now - self._last_capacity >= self.capacity_every_s:
            luns = cap.lun_devices(self.cfg)
            if self._worker.submit("capacity", self._generation, lambda: self._capacity_reader(luns)):
                self._last_capacity = now
        if self.cfg.targets and now - self._last_reservations >= self.reservations_every_s:
            dirs = {p.name: p for p in self.so_paths()}
            if self._worker.submit("reservations", self._generation, lambda: pr.read_reservations(self.cfg, dirs)):
                self._last_reservations = now

    def _consume_background(self) -> None:
        for result in self._worker.take():
            if result.error:
                continue
            if result.kind == "capacity":
                self._take_capacity(result.value)
            elif result.kind == "reservations":
                self._take_reservations(result.value)
            elif result.generation == self._generation:
                snap, drift = result.value
                self._snap, self._snap_generation = snap, result.generation
                if drift and self._applied and not self._drift:
                    log.warning("lio_drift", node=self.node, detail="LIO differs from the configuration; "
                                "reapplying")
                self._drift = drift

    def _take_capacity(self, readings: list[cap.CapacityReading]) -> None:
        self._capacity = readings
        crossed, recovered = self._watch.update(readings)
        for r in crossed:
            log.warning("capacity_threshold", node=self.node, lun=r.lun, pool=r.pool, used_percent=round(
                100 * (r.used_ratio or 0), 1), threshold_percent=round(100 * r.threshold_ratio))
        for r in recovered:
            log.info("capacity_recovered", node=self.node, lun=r.lun, pool=r.pool,
                     used_percent=round(100 * (r.used_ratio or 0), 1))
        if (crossed or recovered) and self.on_capacity_crossing is not None:
            self.on_capacity_crossing()
        if self.on_capacity is not None:
            for r in readings:
                if r.used_ratio is not None:
                    self.on_capacity(r)

    # -- the initiators' reservations, carried to the next active (prsync.py) ------------------------------------

    def load_reservations(self, epoch: int, published: dict[str, dict[str, Any]], keep_local: bool,
                          deadline: float) -> str:
        desired = self._desired
        if desired is None:
            raise AdapterError("no applicable LIO configuration to load reservations into")
        try:
            return self.prsync.load(epoch, published, keep_local, desired, deadline)
        finally:
            self._reservations_moved()

    def serve_reservation_files(self, publish: Callable[[int, dict[str, str], float], None], budget_s: float,
                                backing: Path) -> PrStore:
        """Serve ``<dbroot>/pr`` from this process (prstore.py): on the serving active a PR-OUT then completes
        only after its state is in ZooKeeper. Before the first ConfigureTarget (LIO writes there from then on)."""
        store = PrStore(pr.aptpl_dir(self.root), backing)
        store.start()
        self.prsync.serve_files(store, publish, budget_s)
        return store

    def reservations_sync_report(self) -> dict[str, Any]:
        return self.prsync.report()

    def reservations_to_publish(self) -> dict[str, str]:
        return self.prsync.to_publish()

    def reservations_published(self, changed: dict[str, str]) -> None:
        self.prsync.published(changed)
        self._reservations_moved()

    def _reservations_moved(self) -> None:
        """What ``hactl status`` shows of them changed (published, loaded): republish the member report."""
        if self.on_reservations_changed is not None:
            self.on_reservations_changed()

    def _reexport(self, deadline: float) -> str:
        """Re-create the exports prsync removed: the cached snapshot no longer shows LIO as it is."""
        self._bump()
        self._structure += 1
        self._snap = None
        self._applied = False
        return self.configure(deadline)

    def _take_reservations(self, states: list[pr.LunReservations]) -> None:
        before = self.reservations_report()
        self._reservations = states
        if self.reservations_report() != before and self.on_reservations_changed is not None:
            self.on_reservations_changed()

    def reservations_report(self) -> list[dict[str, object]]:
        """The LUNs that carry initiators' registrations or a reservation on this controller (LIO keeps them
        per controller: docs/vmware.md), for the member report and ``hactl status``."""
        return [r.as_dict() for r in self._reservations if r.registrations or r.holder is not None]

    def capacity_report(self) -> list[dict[str, object]]:
        """The last capacity readings (for the member report and ``hactl status``)."""
        return [r.as_dict() for r in self._capacity]


def _lun_count(tpg_path: Path) -> int:
    try:
        return sum(1 for name in os.listdir(tpg_path / "lun") if name.startswith("lun_"))
    except OSError:
        return -1


def own_portals(cfg: Config, node: str) -> list[ManagedAddress]:
    return [ManagedAddress(p.address, p.interface) for p in cfg.node(node).portals]


def peer_portals(cfg: Config, node: str) -> list[ManagedAddress]:
    """The peer's portal addresses as this controller would hold them (same interface name: config check)."""
    return [ManagedAddress(p.address, p.interface) for p in cfg.peer_of(node).portals]
