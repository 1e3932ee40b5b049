"""What hacontrol keeps in ZooKeeper, and how it is encoded (JSON, one document per znode).

Layout under the configured chroot::

    /epoch                   persistent  {"epoch": N}            advanced by compare-and-set on every takeover
    /leader                  ephemeral   {"node", "epoch", "at"}  owned by the active agent's session
    /members/<node>          ephemeral   the agent's report (role, ALUA, VIPs, readiness, blockers, ...)
    /alive/<node>            ephemeral   empty; rewritten by the leading agent on every tick (its version is
                                         the leader's heartbeat through ZooKeeper, read by the peer)
    /intents/switchover      persistent  {"id", "target", "by", "at", "timeout_s", "state", "reason", ...}
    /intents/maintenance     persistent  {"enabled", "reason", "by", "at"}
    /history/failover-NNNN   persistent  one failover or switchover with its phase timestamps (bounded)
    /config                  persistent  {"version", "sha256", "text", "by", "at"}  (hactl config apply)

Decoding is forgiving in one way only: a field it does not know is ignored
(a newer agent may add fields); a missing or malformed required field makes
the whole document unreadable (None), never half-read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hacontrol.core.model import AluaState, PeerReport, Role

EPOCH = "epoch"
LEADER = "leader"
MEMBERS = "members"
ALIVE = "alive"
SWITCHOVER = "intents/switchover"
MAINTENANCE = "intents/maintenance"
HISTORY = "history"
CONFIG = "config"
RESERVATIONS = "reservations"  # one child per LUN: the initiators' PR state the active published
HISTORY_KEEP = 200


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def loads(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def encode_report(node: str, report: PeerReport, extra: dict[str, Any]) -> bytes:
    doc = {
        "node": node,
        "role": report.role.value,
        "own_alua": None if report.own_alua is None else int(report.own_alua),
        "vips": sorted(report.vips),
        "ready": report.ready,
        "epoch_seen": report.epoch_seen,
        "handed_off": report.handed_off,
        "hosts_peer_ports": report.hosts_peer_ports,
        "maintenance_seen": report.maintenance_seen,
        "reason": report.reason,
        "blockers": list(report.blockers),
        "frozen": list(report.frozen),
    }
    doc.update(extra)
    return dumps(doc)


def decode_report(data: bytes | None) -> PeerReport | None:
    doc = loads(data)
    if doc is None:
        return None
    try:
        alua = doc.get("own_alua")
        return PeerReport(
            node=str(doc["node"]),
            role=Role(doc["role"]),
            own_alua=None if alua is None else AluaState(int(alua)),
            vips=frozenset(str(v) for v in doc.get("vips", ())),
            ready=bool(doc.get("ready", False)),
            epoch_seen=int(doc.get("epoch_seen", 0)),
            handed_off=doc.get("handed_off"),
            hosts_peer_ports=bool(doc.get("hosts_peer_ports", False)),
            maintenance_seen=bool(doc.get("maintenance_seen", False)),
            reason=str(doc.get("reason", "")),
            blockers=tuple(str(b) for b in doc.get("blockers", ())),
            frozen=tuple(str(f) for f in doc.get("frozen", ())),
        )
    except (KeyError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class LeaderDoc:
    node: str
    epoch: int
    at: float


def decode_leader(data: bytes | None) -> LeaderDoc | None:
    doc = loads(data)
    try:
        return None if doc is None else LeaderDoc(str(doc["node"]), int(doc["epoch"]), float(doc.get("at", 0)))
    except (KeyError, ValueError, TypeError):
        return None


def decode_epoch(data: bytes | None) -> int | None:
    doc = loads(data)
    try:
        return None if doc is None else int(doc["epoch"])
    except (KeyError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class SwitchoverDoc:
    intent_id: str
    target: str
    by: str
    at: float  # wall clock of the request (for display and age)
    timeout_s: float
    state: str = "pending"
    reason: str = ""
    finished_at: float | None = None

    def encode(self) -> bytes:
        return dumps({"id": self.intent_id, "target": self.target, "by": self.by, "at": self.at,
                      "timeout_s": self.timeout_s, "state": self.state, "reason": self.reason,
                      "finished_at": self.finished_at})


def decode_switchover(data: bytes | None) -> SwitchoverDoc | None:
    doc = loads(data)
    if doc is None:
        return None
    try:
        return SwitchoverDoc(str(doc["id"]), str(doc["target"]), str(doc.get("by", "")), float(doc["at"]),
                             float(doc["timeout_s"]), str(doc.get("state", "pending")), str(doc.get("reason", "")),
                             None if doc.get("finished_at") is None else float(doc["finished_at"]))
    except (KeyError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class MaintenanceDoc:
    enabled: bool
    reason: str = ""
    by: str = ""
    at: float = 0.0

    def encode(self) -> bytes:
        return dumps({"enabled": self.enabled, "reason": self.reason, "by": self.by, "at": self.at})


def decode_maintenance(data: bytes | None) -> MaintenanceDoc:
    doc = loads(data)
    if doc is None:
        return MaintenanceDoc(False)
    return MaintenanceDoc(bool(doc.get("enabled", False)), str(doc.get("reason", "")), str(doc.get("by", "")),
                          float(doc.get("at", 0.0) or 0.0))
