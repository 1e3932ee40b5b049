"""The operator's side of ZooKeeper (hactl): read the cluster, write intents, read history.

An operator never writes the leader znode or the epoch: a switchover is an
intent that the active agent carries out (or refuses, with a reason), and
maintenance is a flag both agents read.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from hacontrol.adapters.zookeeper import codec
from hacontrol.adapters.zookeeper.session import Session


class IntentRefused(Exception):
    pass


@dataclass(frozen=True)
class Member:
    node: str
    doc: dict[str, Any]
    session_id: int
    modified_wall: float  # ZooKeeper's mtime of the member znode (seconds)


@dataclass(frozen=True)
class ClusterView:
    epoch: int
    leader: codec.LeaderDoc | None
    leader_session: int | None
    leader_ctime: float | None  # when the leader znode was created, on ZooKeeper's clock (seconds)
    members: dict[str, Member]
    switchover: codec.SwitchoverDoc | None
    maintenance: codec.MaintenanceDoc
    config: dict[str, Any] | None


class Admin:
    def __init__(self, session: Session, timeout_s: float = 5.0):
        self.s = session
        self.timeout_s = timeout_s

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout_s

    def _get(self, name: str) -> tuple[bytes | None, Any]:
        return self.s.get_or_none(name, self._deadline())

    def view(self) -> ClusterView:
        self.s.wait(self.s.client.sync_async(self.s.path("")), self._deadline())
        data, stat = self._get(codec.LEADER)
        leader = codec.decode_leader(data)
        members: dict[str, Member] = {}
        try:
            names = self.s.wait(self.s.client.get_children_async(self.s.path(codec.MEMBERS)), self._deadline())
        except NoNodeError:
            names = []
        for name in sorted(names):
            mdata, mstat = self._get(f"{codec.MEMBERS}/{name}")
            doc = codec.loads(mdata)
            if doc is not None and mstat is not None:
                members[name] = Member(name, doc, mstat.ephemeralOwner, mstat.mtime / 1000.0)
        cfg_doc = codec.loads(self._get(codec.CONFIG)[0])
        return ClusterView(
            epoch=codec.decode_epoch(self._get(codec.EPOCH)[0]) or 0,
            leader=leader,
            leader_session=None if stat is None else stat.ephemeralOwner,
            leader_ctime=None if stat is None else stat.ctime / 1000.0,
            members=members,
            switchover=codec.decode_switchover(self._get(codec.SWITCHOVER)[0]),
            maintenance=codec.decode_maintenance(self._get(codec.MAINTENANCE)[0]),
            config=None if cfg_doc is None else {k: v for k, v in cfg_doc.items() if k != "text"},
        )

    def request_switchover(self, target: str, timeout_s: float, by: str) -> codec.SwitchoverDoc:
        """Write a pending switchover intent; refuse if another one is still pending and not expired."""
        doc = codec.SwitchoverDoc(uuid.uuid4().hex[:12], target, by, time.time(), timeout_s)
        data, stat = self._get(codec.SWITCHOVER)
        old = codec.decode_switchover(data)
        if old is not None and old.state == "pending" and time.time() < old.at + old.timeout_s:
            raise IntentRefused(f"switchover {old.intent_id} to {old.target} is still pending "
                                f"(requested by {old.by or 'unknown'})")
        try:
            if stat is None:
                self.s.wait(self.s.client.create_async(self.s.path(codec.SWITCHOVER), doc.encode(), acl=self.s.acl),
                            self._deadline())
            else:
                self.s.wait(self.s.client.set_async(self.s.path(codec.SWITCHOVER), doc.encode(),
                                                    version=stat.version), self._deadline())
        except (BadVersionError, NodeExistsError) as exc:
            raise IntentRefused("another operator changed the switchover intent at the same time; retry") from exc
        return doc

    def switchover(self) -> codec.SwitchoverDoc | None:
        return codec.decode_switchover(self._get(codec.SWITCHOVER)[0])

    def expire_switchover(self, intent_id: str, reason: str) -> None:
        """Mark our own pending intent refused (hactl gave up waiting), so no agent acts on it later."""
        data, stat = self._get(codec.SWITCHOVER)
        doc = codec.decode_switchover(data)
        if doc is None or doc.intent_id != intent_id or doc.state != "pending":
            return
        done = replace(doc, state="refused", reason=reason, finished_at=time.time())
        try:
            self.s.wait(self.s.client.set_async(self.s.path(codec.SWITCHOVER), done.encode(), version=stat.version),
                        self._deadline())
        except BadVersionError:
            pass  # an agent finished it meanwhile: its outcome stands

    def config(self) -> tuple[dict[str, Any] | None, int | None]:
        """The distributed configuration (with its text) and the znode version, or (None, None)."""
        data, stat = self._get(codec.CONFIG)
        return codec.loads(data), None if stat is None else stat.version

    def put_config(self, text: str, sha256: str, expected_version: int | None, by: str) -> int:
        """Store a validated configuration; refused if someone else stored one since we read ``expected_version``."""
        current, version = self.config()
        number = int(current.get("number", 0)) + 1 if current else 1
        doc = codec.dumps({"number": number, "sha256": sha256, "text": text, "by": by, "at": time.time()})
        path = self.s.path(codec.CONFIG)
        try:
            if version is None:
                if expected_version is not None:
                    raise IntentRefused("the distributed configuration was removed meanwhile; run apply again")
                self.s.wait(self.s.client.create_async(path, doc, acl=self.s.acl), self._deadline())
                return 0
            if version != expected_version:
                raise IntentRefused("another operator applied a configuration meanwhile; look at the diff again")
            stat = self.s.wait(self.s.client.set_async(path, doc, version=version), self._deadline())
            return stat.version
        except (BadVersionError, NodeExistsError) as exc:
            raise IntentRefused("another operator applied a configuration meanwhile; look at the diff again") from exc

    def set_maintenance(self, enabled: bool, reason: str, by: str) -> codec.MaintenanceDoc:
        doc = codec.MaintenanceDoc(enabled, reason, by, time.time())
        path = self.s.path(codec.MAINTENANCE)
        try:
            self.s.wait(self.s.client.set_async(path, doc.encode()), self._deadline())
        except NoNodeError:
            self.s.wait(self.s.client.create_async(path, doc.encode(), acl=self.s.acl), self._deadline())
        return doc

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        try:
            names = self.s.wait(self.s.client.get_children_async(self.s.path(codec.HISTORY)), self._deadline())
        except NoNodeError:
            return []
        out = []
        for name in sorted(names)[-limit:]:
            doc = codec.loads(self._get(f"{codec.HISTORY}/{name}")[0])
            if doc is not None:
                out.append({"id": name, **doc})
        return out
