"""Prometheus metrics (prometheus_client): what the agent is, what it sees, and how long failovers took.

Fed by the loop (one TickReport per tick) and by the timeline (one record per failover or step-down).
Served on ``metrics.listen`` (default 127.0.0.1:9475) by prometheus_client's own HTTP thread.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from hacontrol.core.decide import Blocker, Reason
from hacontrol.core.model import Role, SessionState

log = structlog.get_logger("hacontrol.metrics")

PHASE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, node: str, registry: CollectorRegistry | None = None):
        self.node = node
        r = self.registry = registry or CollectorRegistry()
        self.role = Gauge("hacontrol_role", "1 for the role this controller is in now", ["role"], registry=r)
        self.leader = Gauge("hacontrol_leader", "1 while this controller holds the leader znode", registry=r)
        self.epoch = Gauge("hacontrol_epoch", "the cluster's epoch (fencing token) as last read", registry=r)
        self.alua = Gauge("hacontrol_alua_state", "ALUA state as this controller presents it (SPC-4 code)",
                          ["group"], registry=r)
        self.vip = Gauge("hacontrol_vip_held", "1 while this controller holds the address", ["address"], registry=r)
        self.session = Gauge("hacontrol_zookeeper_session", "1 for the ZooKeeper session state now", ["state"],
                             registry=r)
        self.blocker = Gauge("hacontrol_failover_blocked", "1 for each reason this controller could not take "
                             "over now", ["blocker"], registry=r)
        self.maintenance = Gauge("hacontrol_maintenance", "1 while maintenance mode is on", registry=r)
        self.fenced = Counter("hacontrol_fence_attempts_total", "fencing attempts by result", ["result"], registry=r)
        self.steps = Counter("hacontrol_steps_total", "executed plan steps by action and result",
                             ["action", "result"], registry=r)
        self.tick = Histogram("hacontrol_tick_seconds", "duration of one observe-decide-execute tick",
                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0), registry=r)
        self.phase = Histogram("hacontrol_failover_phase_seconds", "time from detection to the end of each "
                               "takeover phase (claimed, fenced, alua, vips, active)", ["kind", "phase"],
                               buckets=PHASE_BUCKETS, registry=r)
        self.step_down = Histogram("hacontrol_step_down_seconds", "time to stop serving, by reason", ["reason"],
                                   buckets=PHASE_BUCKETS, registry=r)
        self.failsafe = Gauge("hacontrol_failsafe", "1 while this controller serves without ZooKeeper on the peer's "
                              "promise (peer link failsafe)", registry=r)
        self.promised = Gauge("hacontrol_peer_promised", "1 while this controller has promised the peer not to claim",
                              registry=r)
        self.link_age = Gauge("hacontrol_peer_link_heard_age_seconds", "seconds since the peer was last heard on "
                              "each peer-link path (absent: never)", ["path"], registry=r)
        self.capacity = Gauge("hacontrol_capacity_used_ratio", "used / size of each LUN's backing store", ["lun"],
                              registry=r)
        self.capacity_threshold = Gauge("hacontrol_capacity_threshold_ratio", "warning threshold per LUN", ["lun"],
                                        registry=r)

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)
        log.info("metrics_listening", listen=listen)

    def on_tick(self, report: Any) -> None:
        obs, plan = report.observation, report.plan
        for role in Role:
            self.role.labels(role.value).set(1 if role is plan.role else 0)
        c = obs.coord
        self.leader.set(1 if c.leader is not None and c.leader.ours else 0)
        self.epoch.set(c.epoch)
        for state in SessionState:
            self.session.labels(state.value).set(1 if state is c.session else 0)
        d = obs.datapath
        if d.own_group is not None:
            self.alua.labels("own").set(int(d.own_group))
        if d.peer_group is not None:
            self.alua.labels("peer").set(int(d.peer_group))
        for address in obs.spec.vips:
            self.vip.labels(address).set(1 if address in d.vips else 0)
        for b in Blocker:
            self.blocker.labels(b.name.lower()).set(1 if b in plan.blockers else 0)
        self.maintenance.set(1 if c.maintenance.enabled else 0)
        self._on_link(obs.link, plan.reason)
        self.tick.observe(report.duration_s)
        for r in report.results:
            self.steps.labels(r.action, "ok" if r.ok else "failed").inc()
            if r.action == "FencePeer":
                self.fenced.labels("ok" if r.ok else "failed").inc()

    def _on_link(self, link: Any, reason: Reason) -> None:
        if not link.configured:
            return
        now = time.monotonic()
        self.failsafe.set(1 if reason is Reason.FAILSAFE else 0)
        self.promised.set(1 if link.promised_until is not None and now < link.promised_until else 0)
        for path, heard in enumerate(link.heard):
            if heard is not None:
                self.link_age.labels(str(path)).set(round(now - heard, 3))

    def on_record(self, doc: dict[str, Any]) -> None:
        if doc.get("kind") == "step_down":
            if doc.get("total_s") is not None:
                self.step_down.labels(doc.get("reason", "")).observe(float(doc["total_s"]))
            return
        kind = str(doc.get("kind", "failover"))
        for phase, seconds in doc.get("phases", {}).items():
            if phase != "detect":
                self.phase.labels(kind, phase).observe(float(seconds))

    def on_capacity(self, lun: str, used_ratio: float, threshold_ratio: float) -> None:
        self.capacity.labels(lun).set(used_ratio)
        self.capacity_threshold.labels(lun).set(threshold_ratio)
