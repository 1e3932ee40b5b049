"""The agent's side of ZooKeeper: observe the cluster, claim and release leadership, publish, record history.

The lease: every observation starts with a ``sync`` (which the server can
only answer after going through the ZooKeeper leader) followed by the reads,
pipelined on the same connection. ``lease_confirmed_at`` is the monotonic
time just *before* the sync was sent, and only counts when every reply came
back on the same session. The servers cannot have expired the session
earlier than ``session timeout`` after that instant.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import structlog
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

from hacontrol.adapters.zookeeper import codec
from hacontrol.adapters.zookeeper.session import Session
from hacontrol.agent.protocols import AdapterError
from hacontrol.core.model import Coordination, Leader, Maintenance, PeerReport, SessionState, SwitchoverIntent

log = structlog.get_logger("hacontrol.zookeeper")


class Coordinator:
    def __init__(self, session: Session, node: str, peer: str, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.s = session
        self.node = node
        self.peer = peer
        self.clock = clock
        self.wall = wall
        self._view = Coordination(SessionState.LOST, None, None, 0, None)
        self._confirmed_sid: int | None = None
        self._intent_seen: dict[str, float] = {}  # intent id -> deadline on our monotonic clock
        self._member_sid: int | None = None
        self._layout_ok = False
        self.config_version: int | None = None  # znode version of /config as last seen (hactl config apply)
        self._connected_since: float | None = None
        self._peer_seen = False
        self.leader_at: float | None = None  # wall time in the leader znode (for history)
        self.peer_connections: Any = []  # the peer's last published iSCSI connections (port takeover tickles)
        self._peer_alive: tuple[Any, float | None] = (None, None)  # ((owner, version), when first seen)
        # While leading, rewrite our alive znode this often (None: never; only a peer that may take over fast
        # reads it). Fire and forget: its result is looked at on the next observation, never waited for.
        self.touch_every_s: float | None = None
        self._touch: Any = None
        self._touched_at = float("-inf")

    # --- observing ---------------------------------------------------------------------------

    def observe(self, deadline: float) -> Coordination:
        state = self.s.state
        if state is SessionState.CONNECTED:
            try:
                if not self._layout_ok:
                    self.s.ensure_layout(deadline)
                    self._layout_ok = True
                self._view = self._read(deadline)
                return self._view
            except (KazooException, AdapterError) as exc:
                log.debug("zk_observe_failed", error=str(exc))
                state = self.s.state if self.s.state is not SessionState.CONNECTED else SessionState.SUSPENDED
        return self._stale(state)

    def _stale(self, state: SessionState) -> Coordination:
        v = self._view
        if state is SessionState.LOST:
            self._confirmed_sid = None
            leader = None if v.leader is None else replace(v.leader, ours=False)
            return replace(v, session=SessionState.LOST, lease_confirmed_at=None, leader=leader, published=None)
        return replace(v, session=state)

    def _read(self, deadline: float) -> Coordination:
        c = self.s.client
        sid = self.s.session_id
        sent_at = self.clock()
        wake = self._wake
        sync = c.sync_async(self.s.path(""))
        names = {
            "leader": codec.LEADER,
            "epoch": codec.EPOCH,
            "peer": f"{codec.MEMBERS}/{self.peer}",
            "mine": f"{codec.MEMBERS}/{self.node}",
            "switchover": codec.SWITCHOVER,
            "maintenance": codec.MAINTENANCE,
        }
        watches = {k: c.exists_async(self.s.path(p), watch=wake) for k, p in names.items() if k != "epoch"}
        watches["config"] = c.exists_async(self.s.path(codec.CONFIG), watch=wake)
        gets = {k: c.get_async(self.s.path(p)) for k, p in names.items()}
        # The peer's alive znode (no watch: it changes with every tick the peer leads, and must not wake us)
        peer_alive = c.exists_async(self.s.path(f"{codec.ALIVE}/{self.peer}"))
        self.s.wait(sync, deadline)
        for key, w in watches.items():
            stat = self.s.wait(w, deadline)
            if key == "config":
                self.config_version = None if stat is None else stat.version
        docs: dict[str, tuple[bytes | None, Any]] = {}
        for key, result in gets.items():
            try:
                docs[key] = self.s.wait(result, deadline)
            except NoNodeError:
                docs[key] = (None, None)
        self._note_peer_alive(self.s.wait(peer_alive, deadline), sent_at)
        self._touch_alive(sent_at)
        if sid is None or self.s.session_id != sid or self.s.state is not SessionState.CONNECTED:
            raise AdapterError("session changed while observing")
        self._confirmed_sid = sid
        if self._connected_since is None:
            self._connected_since = sent_at
        return self._build(docs, sid, sent_at)

    def _build(self, docs: dict[str, tuple[bytes | None, Any]], sid: int, sent_at: float) -> Coordination:
        leader = None
        data, stat = docs["leader"]
        doc = codec.decode_leader(data)
        if doc is not None and stat is not None:
            leader = Leader(doc.node, doc.epoch, stat.ephemeralOwner == sid)
            self.leader_at = doc.at
        epoch = codec.decode_epoch(docs["epoch"][0]) or 0
        peer = codec.decode_report(docs["peer"][0])
        if peer is not None:  # kept when the peer's znode goes: port takeover needs the dead peer's last list
            raw = codec.loads(docs["peer"][0]) or {}
            self.peer_connections = raw.get("iscsi_connections", [])
        self._peer_seen = self._peer_seen or peer is not None
        mine_data, mine_stat = docs["mine"]
        published = codec.decode_report(mine_data) if mine_stat is not None and mine_stat.ephemeralOwner == sid \
            else None
        m = codec.decode_maintenance(docs["maintenance"][0])
        return Coordination(
            session=SessionState.CONNECTED,
            lease_confirmed_at=sent_at,
            leader=leader,
            epoch=epoch,
            peer=peer,
            switchover=self._intent(docs["switchover"][0]),
            maintenance=Maintenance(m.enabled, m.reason, m.by),
            published=published,
            granted_timeout_s=self.s.negotiated_timeout_s,
            connected_since=self._connected_since,
            peer_seen=self._peer_seen,
            peer_alive_at=self._peer_alive[1],
        )

    def _note_peer_alive(self, stat: Any, sent_at: float) -> None:
        version = None if stat is None else (stat.ephemeralOwner, stat.version)
        if version is None:
            self._peer_alive = (None, None)
        elif version != self._peer_alive[0]:
            self._peer_alive = (version, sent_at)  # changed since the last read: it ticked before this read

    def _touch_alive(self, now: float) -> None:
        """The leader's heartbeat through ZooKeeper: while we lead, rewrite our alive znode (a write each
        ``touch_every_s``, never waited for: a ZooKeeper write commits through the leader and its disk). Best
        effort: a missed touch can only make the peer think we stopped ticking, and it also needs the peer
        link silent before it acts."""
        leading = self._view.leader is not None and self._view.leader.ours
        if self.touch_every_s is None or not leading or now - self._touched_at < self.touch_every_s:
            return
        c, path = self.s.client, self.s.path(f"{codec.ALIVE}/{self.node}")
        previous, self._touch = self._touch, None
        if previous is not None and previous.ready() and isinstance(previous.exception, NoNodeError):
            self._touch = c.create_async(path, b"", ephemeral=True, acl=self.s.acl)  # first as leader here
        else:
            self._touch = c.set_async(path, b"")
        self._touched_at = now

    def _intent(self, data: bytes | None) -> SwitchoverIntent | None:
        doc = codec.decode_switchover(data)
        if doc is None:
            return None
        if doc.intent_id not in self._intent_seen:
            # The znode carries a wall-clock request time and a duration; convert once, on first sight,
            # to our monotonic clock (clock skew only shifts the deadline by the skew, never extends it).
            age = max(0.0, self.wall() - doc.at)
            self._intent_seen = {doc.intent_id: self.clock() + max(0.0, doc.timeout_s - age)}
        return SwitchoverIntent(doc.intent_id, doc.target, self._intent_seen[doc.intent_id], doc.state)

    def _wake(self, event: Any = None) -> None:
        self.s.wake.set()

    # --- acting ------------------------------------------------------------------------------
    # Each public step turns ZooKeeper's exceptions into AdapterError with a sentence: the executor
    # reports it as a failed step and the next tick observes what really happened.

    def claim(self, expected_epoch: int, deadline: float) -> bool:
        """Create the leader znode and advance the epoch in one ZooKeeper multi: both happen or neither."""
        with _zk_errors("claim leadership"):
            return self._claim(expected_epoch, deadline)

    def _claim(self, expected_epoch: int, deadline: float) -> bool:
        c = self.s.client
        data, stat = self.s.wait(c.get_async(self.s.path(codec.EPOCH)), deadline)
        if codec.decode_epoch(data) != expected_epoch:
            return False
        new = expected_epoch + 1
        tx = c.transaction()
        tx.create(self.s.path(codec.LEADER), codec.dumps({"node": self.node, "epoch": new, "at": self.wall()}),
                  ephemeral=True, acl=self.s.acl)
        tx.set_data(self.s.path(codec.EPOCH), codec.dumps({"epoch": new}), version=stat.version)
        results = self.s.wait(tx.commit_async(), deadline)
        won = not any(isinstance(r, Exception) for r in results)
        log.info("zk_claim", node=self.node, epoch=new, won=won)
        return won

    def take_over(self, expected_epoch: int, stale_node: str, deadline: float) -> bool:
        """Fast takeover: in one multi guarded by the epoch counter's version, delete ``stale_node``'s leader znode
        (if it is still there under ``expected_epoch``), create ours and advance the epoch."""
        with _zk_errors("take leadership over"):
            return self._take_over(expected_epoch, stale_node, deadline)

    def _take_over(self, expected_epoch: int, stale_node: str, deadline: float) -> bool:
        c = self.s.client
        data, stat = self.s.wait(c.get_async(self.s.path(codec.EPOCH)), deadline)
        if codec.decode_epoch(data) != expected_epoch:
            return False
        tx = c.transaction()
        try:
            leader_data, leader_stat = self.s.wait(c.get_async(self.s.path(codec.LEADER)), deadline)
        except NoNodeError:
            leader_stat = None  # expired meanwhile, or the peer stepped down: an ordinary claim then
        if leader_stat is not None:
            doc = codec.decode_leader(leader_data)
            if doc is None or doc.node != stale_node or doc.epoch != expected_epoch:
                return False
            tx.delete(self.s.path(codec.LEADER), version=leader_stat.version)
        new = expected_epoch + 1
        tx.create(self.s.path(codec.LEADER), codec.dumps({"node": self.node, "epoch": new, "at": self.wall()}),
                  ephemeral=True, acl=self.s.acl)
        tx.set_data(self.s.path(codec.EPOCH), codec.dumps({"epoch": new}), version=stat.version)
        results = self.s.wait(tx.commit_async(), deadline)
        won = not any(isinstance(r, Exception) for r in results)
        log.info("zk_take_over", node=self.node, stale=stale_node, epoch=new, won=won)
        return won

    def release(self, epoch: int, deadline: float) -> bool:
        """Delete the leader znode if our session owns it under ``epoch``."""
        with _zk_errors("release leadership"):
            return self._release(epoch, deadline)

    def _release(self, epoch: int, deadline: float) -> bool:
        c = self.s.client
        try:
            data, stat = self.s.wait(c.get_async(self.s.path(codec.LEADER)), deadline)
        except NoNodeError:
            return True
        doc = codec.decode_leader(data)
        if stat.ephemeralOwner != self.s.session_id or doc is None or doc.epoch != epoch:
            return False
        with contextlib.suppress(NoNodeError):
            self.s.wait(c.delete_async(self.s.path(codec.LEADER), version=stat.version), deadline)
        return True

    def publish(self, report: PeerReport, extra: dict[str, Any], deadline: float) -> None:
        """Write our member znode (ephemeral, owned by our session)."""
        with _zk_errors("publish our report"):
            self._publish(report, extra, deadline)

    def _publish(self, report: PeerReport, extra: dict[str, Any], deadline: float) -> None:
        c, sid = self.s.client, self.s.session_id
        path = self.s.path(f"{codec.MEMBERS}/{self.node}")
        data = codec.encode_report(self.node, report, {**extra, "at": self.wall()})
        if self._member_sid == sid:
            try:
                self.s.wait(c.set_async(path, data), deadline)
                return
            except NoNodeError:
                self._member_sid = None
        try:
            self.s.wait(c.create_async(path, data, ephemeral=True, acl=self.s.acl), deadline)
        except NodeExistsError:
            _, stat = self.s.wait(c.get_async(path), deadline)
            if stat.ephemeralOwner != sid:
                # A previous incarnation of this agent: its session is doomed, take the name now.
                log.warning("zk_member_replaced", node=self.node, old_session=hex(stat.ephemeralOwner))
                self.s.wait(c.delete_async(path, version=stat.version), deadline)
                self.s.wait(c.create_async(path, data, ephemeral=True, acl=self.s.acl), deadline)
            else:
                self.s.wait(c.set_async(path, data), deadline)
        self._member_sid = sid

    def finish_switchover(self, intent_id: str, outcome: str, reason: str, deadline: float) -> bool:
        with _zk_errors("finish the switchover"):
            return self._finish_switchover(intent_id, outcome, reason, deadline)

    def _finish_switchover(self, intent_id: str, outcome: str, reason: str, deadline: float) -> bool:
        c = self.s.client
        try:
            data, stat = self.s.wait(c.get_async(self.s.path(codec.SWITCHOVER)), deadline)
        except NoNodeError:
            return False
        doc = codec.decode_switchover(data)
        if doc is None or doc.intent_id != intent_id or doc.state != "pending":
            return False
        done = replace(doc, state=outcome, reason=reason, finished_at=self.wall())
        self.s.wait(c.set_async(self.s.path(codec.SWITCHOVER), done.encode(), version=stat.version), deadline)
        log.info("switchover_finished", intent=intent_id, outcome=outcome, reason=reason)
        return True

    def fetch_config(self, deadline: float) -> tuple[dict[str, Any] | None, int | None]:
        """The distributed configuration document and its znode version (None, None when there is none)."""
        with _zk_errors("read the distributed configuration"):
            data, stat = self.s.get_or_none(codec.CONFIG, deadline)
        return codec.loads(data), None if stat is None else stat.version

    def record_history(self, doc: dict[str, Any], deadline: float) -> None:
        with _zk_errors("record history"):
            self._record_history(doc, deadline)

    def _record_history(self, doc: dict[str, Any], deadline: float) -> None:
        c = self.s.client
        self.s.wait(c.create_async(self.s.path(f"{codec.HISTORY}/failover-"), codec.dumps(doc), sequence=True,
                                   acl=self.s.acl), deadline)
        children = sorted(self.s.wait(c.get_children_async(self.s.path(codec.HISTORY)), deadline))
        for old in children[:-codec.HISTORY_KEEP]:
            with contextlib.suppress(NoNodeError):
                self.s.wait(c.delete_async(self.s.path(f"{codec.HISTORY}/{old}")), deadline)


    # --- the initiators' persistent reservations ----------------------------------------------------------

    def publish_reservations(self, epoch: int, changed: dict[str, str], deadline: float) -> None:
        """Write each LUN's PR state (LIO's APTPL text) to ``reservations/<lun>`` in one multi guarded by the
        epoch counter's version: it fails if anyone claimed since ``epoch`` began (a deposed active)."""
        with _zk_errors("publish the initiators' reservations"):
            self._publish_reservations(epoch, changed, deadline)

    def _publish_reservations(self, epoch: int, changed: dict[str, str], deadline: float) -> None:
        c = self.s.client
        data, stat = self.s.wait(c.get_async(self.s.path(codec.EPOCH)), deadline)
        if codec.decode_epoch(data) != epoch:
            raise AdapterError(f"epoch {epoch} is over: not publishing reservations under it")
        paths = {lun: self.s.path(f"{codec.RESERVATIONS}/{lun}") for lun in changed}
        exists = {lun: c.exists_async(path) for lun, path in paths.items()}
        tx = c.transaction()
        tx.check(self.s.path(codec.EPOCH), stat.version)
        now = self.wall()
        for lun, text in sorted(changed.items()):
            doc = codec.dumps({"lun": lun, "epoch": epoch, "node": self.node, "at": now, "aptpl": text})
            if self.s.wait(exists[lun], deadline) is None:
                tx.create(paths[lun], doc, acl=self.s.acl)
            else:
                tx.set_data(paths[lun], doc)
        results = self.s.wait(tx.commit_async(), deadline)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise AdapterError(f"publishing reservations under epoch {epoch} failed: {failed[0]!r}")
        log.info("zk_reservations_published", epoch=epoch, luns=sorted(changed))

    def read_reservations(self, deadline: float) -> dict[str, dict[str, Any]]:
        """Every LUN's published PR state: {lun: {"epoch", "node", "at", "aptpl"}}."""
        with _zk_errors("read the initiators' reservations"):
            c = self.s.client
            base = self.s.path(codec.RESERVATIONS)
            try:
                children = self.s.wait(c.get_children_async(base), deadline)
            except NoNodeError:
                return {}
            gets = {name: c.get_async(f"{base}/{name}") for name in children}
            out = {}
            for name, result in gets.items():
                try:
                    data, _ = self.s.wait(result, deadline)
                except NoNodeError:
                    continue
                doc = codec.loads(data)
                if isinstance(doc, dict) and isinstance(doc.get("aptpl"), str):
                    out[name] = doc
            return out


@contextlib.contextmanager
def _zk_errors(what: str) -> Iterator[None]:
    try:
        yield
    except KazooException as exc:
        raise AdapterError(f"ZooKeeper: cannot {what}: {type(exc).__name__} {exc}".rstrip()) from exc
