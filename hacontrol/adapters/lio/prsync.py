"""The initiators' persistent reservations, carried from one active controller to the next.

LIO keeps PR state per controller, in memory. hacontrol sets ``attrib/force_pr_aptpl`` on every storage
object it creates (before the first export; the kernel refuses it later), so LIO writes the LUN's whole PR
state to ``<dbroot>/pr/aptpl_<unit serial>`` on every PERSISTENT RESERVE OUT that changes it, before it
completes the command. The agent serves that directory (prstore.py): on the serving active, ``file_written``
publishes the new state to ZooKeeper (``reservations/<lun>``, guarded by the epoch) before LIO's write returns,
so no PR-OUT is acknowledged that the next active will not load; if it cannot, the write and the PR-OUT fail.
Every tick the agent also compares the files with what it published and publishes what differs (the state a
takeover loaded, a write whose publication failed). Without the served directory it reads the files instead.

At a takeover, after the fence and before this controller's ports go Active/Optimized, ``load`` makes LIO
here hold what the previous active published: for each LUN whose published state differs from what LIO holds
here (the published state, plus the registrations this controller took through its own Standby ports
under a key the published state still has: ``reservations.merge``), the iSCSI ports of this controller are
closed to initiators (nftables drop: a LUN that is briefly not
exported must not be answered with LOGICAL UNIT NOT SUPPORTED, which ESXi takes for permanent device loss),
the LUN's exports are removed (LIO refuses APTPL metadata for an exported device, and dropping the exports
drops what this controller held), the published registrations are written as APTPL metadata, and the exports
are re-created; LIO attaches each registration to its I_T nexus (initiator port + target port, by relative
port id: the same on both controllers) when the export comes back. Measured in docs/lio.md.

What remains (docs/vmware.md): a registration made through the Standby controller's ports under a key the
active never saw is not carried over (its initiator registers again when its write is refused); the
PRgeneration counter restarts; without FUSE, a PR-OUT completed less than a tick before the active died.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from hacontrol.agent.protocols import AdapterError
from hacontrol.config.schema import Config

from . import names
from . import reservations as pr
from .model import Desired
from .plan import Op
from .prstore import PrStore
from .snapshot import read_text

log = structlog.get_logger("hacontrol.lio")

BLOCK_TABLE = "hacontrol_pr_load"


class PrSync:
    def __init__(self, cfg: Config, node: str, root: Path, *, writer: Any, so_paths: Callable[[], list[Path]],
                 reexport: Callable[[float], str], nft: Callable[[], Any], state_file: Path | None = None) -> None:
        self.cfg, self.node, self.root = cfg, node, root
        self._writer = writer
        self._so_paths = so_paths
        self._reexport = reexport
        self._nft = nft
        self._state_file = state_file
        self.loaded_epoch = self._read_loaded_epoch()
        self._published: dict[str, str] = {}  # LUN -> the text last written to ZooKeeper by this process
        self._local: dict[str, str] = {}  # LUN -> this tick's file text
        self.not_loaded: dict[str, str] = {}  # LUN -> why its published state could not be loaded here
        self._tracked: tuple[list[Path], dict[str, str]] | None = None
        self._lock = threading.Lock()  # _published: the tick and the store's thread both write it
        self.store: PrStore | None = None  # the directory served by this agent (serve_files), or None: read it
        self.serving = False  # own ports Active/Optimized (LioPort: every tick, set_alua): publish first then
        self._publish: Callable[[int, dict[str, str], float], None] | None = None
        self._sync_budget_s = 2.0
        self._moved_logged = False

    # -- the directory LIO writes into, served here (prstore.py) ---------------------------------------------------

    def serve_files(self, store: PrStore, publish: Callable[[int, dict[str, str], float], None],
                    budget_s: float) -> None:
        """From now on LIO's APTPL writes reach ``store``; while this controller serves under a loaded epoch,
        each is answered only after ``publish`` (ZooKeeper, guarded by the epoch) returned within ``budget_s``."""
        self.store = store
        self._publish = publish
        self._sync_budget_s = budget_s
        store.on_complete = self.file_written

    def file_written(self, name: str, text: str) -> None:
        """LIO finished writing ``name`` (a PR-OUT waits for this). On the serving active the state is published
        first; raising fails the write, and LIO fails the PR-OUT instead of acknowledging it. On a standby the
        file stays here (its own Standby-path registrations: ``reservations.merge`` at a takeover)."""
        epoch, publish, tracked = self.loaded_epoch, self._publish, self._tracked
        if not self.serving or not epoch or publish is None or tracked is None or not name.startswith(pr.APTPL_PREFIX):
            return
        # Only what the tick thread left here: this runs while LIO, possibly inside a configfs operation of the
        # tick thread, waits for the answer, so it must not touch configfs itself (it could wait on that thread).
        serial = name.removeprefix(pr.APTPL_PREFIX)
        lun = next((ln for ln, s in tracked[1].items() if s == serial), None)
        if lun is None:
            return
        if lun in self.not_loaded:
            raise AdapterError(f"LUN {lun}: the previous active's reservations were not loaded here "
                               f"({self.not_loaded[lun]}); publishing this one would replace them")
        started = time.monotonic()
        publish(epoch, {lun: text}, started + self._sync_budget_s)
        with self._lock:
            self._published[lun] = text
        log.info("lio_pr_out_published", node=self.node, lun=lun, epoch=epoch,
                 ms=round(1000 * (time.monotonic() - started), 1))

    def served_store(self) -> PrStore | None:
        """The directory this agent serves, if LIO writes into it: dbroot can still move (rtslib-fb sets its
        own) until the first storage object exists, after the agent mounted."""
        store = self.store
        if store is not None and store.mountpoint != self.pr_dir():
            if not self._moved_logged:
                self._moved_logged = True
                log.error("lio_pr_store_not_where_lio_writes", served=str(store.mountpoint),
                          lio=str(self.pr_dir()), detail="restart the agent (it serves where dbroot is then)")
            return None
        return store

    def set_serving(self, serving: bool) -> None:
        """Whether this controller's own ports serve (Active/Optimized). Stepping down makes its PR-OUTs a
        standby's (kept here); serving again under the epoch it loaded (a lease that lapsed and came back)
        publishes them first again."""
        if serving != self.serving and self.loaded_epoch:
            log.info("lio_reservations_sync", node=self.node, epoch=self.loaded_epoch, on=serving)
        self.serving = serving

    # -- reading --------------------------------------------------------------------------------------------------

    def pr_dir(self) -> Path:
        return pr.aptpl_dir(self.root)

    def tracked(self) -> dict[str, str]:
        """LUN name -> unit serial, for the storage objects whose LIO writes its APTPL file (force_pr_aptpl).
        Read again only when the storage objects changed (``so_paths`` returns a new list then)."""
        paths = self._so_paths()
        if self._tracked is not None and self._tracked[0] is paths:
            return self._tracked[1]
        serials = {names.so_name(lun): (lun.name, lun.serial) for t in self.cfg.targets for lun in t.luns}
        out = {}
        for path in paths:
            entry = serials.get(path.name)
            if entry is not None and read_text(str(path / "attrib" / "force_pr_aptpl")) == "1":
                out[entry[0]] = entry[1]
        self._tracked = (paths, out)
        return out

    def read_local(self) -> dict[str, str]:
        """Every tracked LUN's APTPL file as LIO last wrote it ("" when it wrote none): one directory listing,
        and a read of each file there is (only LUNs whose initiators ever sent a PR-OUT have one); from memory
        when this agent serves the directory."""
        names = {lun: f"{pr.APTPL_PREFIX}{serial}" for lun, serial in self.tracked().items()}
        store = self.served_store()
        files = store.files() if store is not None else self._read_dir(set(names.values()))
        self._local = {lun: files.get(name, "") for lun, name in names.items()}
        return self._local

    def _read_dir(self, wanted: set[str]) -> dict[str, str]:
        base = self.pr_dir()
        try:
            present = set(os.listdir(base))
        except OSError:  # no directory yet, or a dead agent's mount (ENOTCONN)
            present = set()
        return {name: read_text(str(base / name)) for name in wanted & present}

    def unpublished(self) -> bool:
        return bool(self.to_publish())

    def to_publish(self) -> dict[str, str]:
        """The LUNs whose state here differs from what this process last published (all of them after a
        restart: the active's LIO is the truth), except those whose load failed in this epoch."""
        with self._lock:
            published = dict(self._published)
        return {lun: text for lun, text in self._local.items()
                if lun not in self.not_loaded
                and pr.canonical(pr.parse_aptpl(text)) != pr.canonical(pr.parse_aptpl(published.get(lun, "")))}

    def published(self, changed: Mapping[str, str]) -> None:
        with self._lock:
            self._published.update(changed)

    def report(self) -> dict[str, Any]:
        """For the member report (``hactl status``): the epoch loaded, what is not in ZooKeeper yet, what could
        not be loaded, and the LUNs whose reservations stay on this controller (no APTPL file)."""
        configured = [lun.name for t in self.cfg.targets for lun in t.luns]
        tracked = self.tracked()
        return {"loaded_epoch": self.loaded_epoch, "unpublished": sorted(self.to_publish()),
                "served": self.served_store() is not None, "synchronous": self.serving and bool(self.loaded_epoch),
                "not_loaded": dict(self.not_loaded),
                "untracked": [lun for lun in configured if lun not in tracked]}

    # -- loading at a takeover ------------------------------------------------------------------------------------

    def load(self, epoch: int, published: Mapping[str, Mapping[str, Any]], keep_local: bool, desired: Desired,
             deadline: float) -> str:
        """Make LIO here hold what ZooKeeper holds, LUN by LUN, where it differs. A LUN that fails is logged and
        left out of publishing for this epoch; the others go on (a takeover is not held up by one LUN)."""
        with self._lock:
            self._published = {}
        self.not_loaded = {}
        if keep_local:
            self._set_loaded(epoch)
            return "kept this controller's reservations (it served under this epoch already)"
        local = self.read_local()
        todo: dict[str, tuple[dict[str, str], ...]] = {}
        for lun, doc in published.items():
            if lun not in local:
                if any(lun == ln.name for t in self.cfg.targets for ln in t.luns):
                    self.not_loaded[lun] = "its storage object keeps no APTPL file here (created before hacontrol " \
                                           "set force_pr_aptpl): re-create it to carry reservations"
                continue
            have = pr.parse_aptpl(local[lun])
            want = pr.merge(pr.parse_aptpl(str(doc.get("aptpl", ""))), have)
            if pr.canonical(want) != pr.canonical(have):
                todo[lun] = want
        if todo:
            with self._ports_closed():
                for lun, blocks in sorted(todo.items()):
                    self._load_lun(lun, blocks, desired)
                self._reexport(deadline)
        for lun in self.not_loaded:
            log.error("lio_reservations_not_loaded", node=self.node, lun=lun, why=self.not_loaded[lun])
        self._set_loaded(epoch)
        loaded = sorted(set(todo) - set(self.not_loaded))
        log.info("lio_reservations_loaded", node=self.node, epoch=epoch, luns=loaded,
                 registrations={lun: len(todo[lun]) for lun in loaded})
        return f"{len(loaded)} LUN(s) loaded" + (f", {len(self.not_loaded)} failed" if self.not_loaded else "")

    def _load_lun(self, lun: str, blocks: tuple[dict[str, str], ...], desired: Desired) -> None:
        so = next((d for d in desired.storage if d.lun_name == lun), None)
        path = next((p for p in self._so_paths() if so is not None and p.name == so.name), None)
        if so is None or path is None:
            self.not_loaded[lun] = "no storage object for it here"
            return
        try:
            lines = pr.metadata_lines(blocks)
            for dt in desired.targets:
                for tpg in dt.tpgs:
                    for lun_id, so_name, _group in tpg.luns:
                        if so_name == so.name and (self.root / "iscsi" / dt.iqn / f"tpgt_{tpg.tag}" / "lun"
                                                   / f"lun_{lun_id}").is_dir():
                            self._writer.run(Op("delete_lun", (dt.iqn, tpg.tag, lun_id)))
            for line in lines:
                with open(path / "pr" / "res_aptpl_metadata", "w") as f:
                    f.write(line)
            name = f"{pr.APTPL_PREFIX}{so.serial}"
            store = self.served_store()
            if store is not None:
                store.put(name, pr.render_aptpl(blocks))
            else:
                (self.pr_dir() / name).write_text(pr.render_aptpl(blocks))
        except (OSError, ValueError, AdapterError) as exc:
            self.not_loaded[lun] = f"{type(exc).__name__}: {exc}"

    @contextlib.contextmanager
    def _ports_closed(self) -> Iterator[None]:
        """Drop initiators' packets to this controller's iSCSI ports while LUNs are re-exported (TCP retransmits
        them after; nothing is refused, no session ends)."""
        ports = sorted({t.port for t in self.cfg.targets})
        nft = self._nft()
        script = (f"add table inet {BLOCK_TABLE}\n"
                  f"add chain inet {BLOCK_TABLE} input {{ type filter hook input priority -10; policy accept; }}\n"
                  f"add rule inet {BLOCK_TABLE} input tcp dport {{ {', '.join(map(str, ports))} }} drop\n")
        nft.run(script)
        try:
            yield
        finally:
            nft.run(f"delete table inet {BLOCK_TABLE}\n")

    # -- which epoch was loaded (survives an agent restart, not a reboot: nor does LIO's state) --------------------

    def _read_loaded_epoch(self) -> int:
        if self._state_file is None:
            return 0
        try:
            return int(self._state_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _set_loaded(self, epoch: int) -> None:
        self.loaded_epoch = epoch
        if self._state_file is not None:
            try:
                tmp = self._state_file.with_suffix(".tmp")
                tmp.write_text(f"{epoch}\n")
                os.replace(tmp, self._state_file)
            except OSError as exc:
                log.warning("lio_reservations_state_unwritten", path=str(self._state_file), error=str(exc))
