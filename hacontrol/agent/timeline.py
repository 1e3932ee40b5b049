"""Failover phases as this agent lived them, for the history in ZooKeeper and the metrics.

A takeover starts when this agent first sees the leader znode gone, or the
leader silent on the peer link (detect), and ends when it is fully active; in between, each step that succeeds stamps
its phase: claimed (leader znode + epoch), fenced, alua (own group AO),
vips (addresses up and announced). A step-down is recorded on the other side.
Times are offsets in seconds from the start, measured on the monotonic clock;
the record also carries the wall-clock start for display.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hacontrol.agent.execute import StepResult
from hacontrol.core import actions as A
from hacontrol.core.decide import Plan, Reason
from hacontrol.core.model import Observation, Role

PHASES = ("detect", "claimed", "fenced", "alua", "vips", "active")


@dataclass
class Takeover:
    started_mono: float
    started_wall: float
    epoch_before: int
    kind: str = "failover"  # failover | switchover
    from_node: str = ""
    detected_by: str = "zookeeper"  # zookeeper (the leader znode went) | peer_link (the leader went silent)
    phases: dict[str, float] = field(default_factory=dict)
    fence_detail: str = ""

    def stamp(self, phase: str, mono: float) -> None:
        self.phases.setdefault(phase, round(mono - self.started_mono, 4))


@dataclass
class Timeline:
    node: str
    peer: str
    record: Callable[[dict[str, Any]], None]
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    current: Takeover | None = None
    demote_started: float | None = None
    demote_reason: Reason | None = None
    last_role: Role | None = None
    _observed_at: float = 0.0

    def tick(self, obs: Observation, plan: Plan, results: Sequence[StepResult], observed_at: float | None = None
             ) -> None:
        now = self.clock()
        self._observed_at = observed_at if observed_at is not None else now
        self._watch_takeover(obs, plan, results, now)
        self._watch_step_down(obs, plan, results, now)
        self.last_role = plan.role

    def _watch_takeover(self, obs: Observation, plan: Plan, results: Sequence[StepResult], now: float) -> None:
        c = obs.coord
        fast = plan.reason is Reason.FAST_TAKEOVER
        leader_gone = c.leader is None and plan.reason in (Reason.CLAIMING, Reason.NOT_READY, Reason.MAINTENANCE)
        if self.current is None and (leader_gone or fast):
            intent = c.switchover
            planned = intent is not None and intent.state == "pending" and intent.target == self.node
            seen = self._observed_at
            self.current = Takeover(seen, self.wall() - (now - seen), c.epoch, "switchover" if planned else "failover",
                                    self.peer, detected_by="peer_link" if fast else "zookeeper")
            self.current.stamp("detect", seen)
        t = self.current
        if t is None:
            return
        if c.leader is not None and not (c.leader.ours and c.leader.node == self.node) and not fast:
            self.current = None  # someone else won (or the silent leader spoke again): nothing to record here
            return
        ended = {r.action: (r.at or now) for r in results if r.ok}
        details = {r.action: r.detail for r in results if r.ok}
        for action in ("ClaimLeadership", "TakeOverLeadership"):
            if action in ended:
                t.stamp("claimed", ended[action])
        for action in ("FencePeer", "FenceDeadPeer"):
            if action in ended:
                t.stamp("fenced", ended[action])
                t.fence_detail = details.get(action, "")
        if any(isinstance(a, A.SetAlua) and a.own.accepts_io for a in plan.actions) and "SetAlua" in ended:
            t.stamp("alua", ended["SetAlua"])
        if "AddVips" in ended:
            t.stamp("vips", ended["AddVips"])
        if plan.role is Role.ACTIVE:
            t.stamp("active", now)
            self.record(self._doc(t, c.epoch))
            self.current = None

    def _doc(self, t: Takeover, epoch: int) -> dict[str, Any]:
        return {"kind": t.kind, "from": t.from_node, "to": self.node, "epoch": epoch, "at": t.started_wall,
                "phases": dict(t.phases), "total_s": t.phases.get("active"), "fence": t.fence_detail,
                "detected_by": t.detected_by}

    def _watch_step_down(self, obs: Observation, plan: Plan, results: Sequence[StepResult], now: float) -> None:
        if plan.role is Role.DEMOTING and self.demote_started is None:
            self.demote_started = now
            self.demote_reason = plan.reason
        if self.demote_started is not None and not obs.datapath.serving and plan.role is not Role.DEMOTING:
            reason = self.demote_reason.value if self.demote_reason else ""
            self.record({"kind": "step_down", "node": self.node, "reason": reason,
                         "at": self.wall() - (now - self.demote_started),
                         "total_s": round(now - self.demote_started, 4)})
            self.demote_started = None
