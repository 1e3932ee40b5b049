"""The agent loop: observe → decide → execute, on a tick and on every ZooKeeper event.

One structlog event ``tick`` per tick (info when the plan does something or the
reason changes, debug otherwise). After a tick whose plan made progress the
next tick starts at once (bounded), so a takeover's steps follow each other
in milliseconds instead of loop intervals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from hacontrol.agent.configsync import ConfigSync
from hacontrol.agent.execute import Executor, StepResult
from hacontrol.agent.observe import Observer
from hacontrol.agent.timeline import Timeline
from hacontrol.core.decide import Plan, decide
from hacontrol.core.model import Observation
from hacontrol.core.timing import Timing

log = structlog.get_logger("hacontrol.agent")

ROUTINE_ACTIONS = ("Publish", "KickWatchdog")
BURST_LIMIT = 8
REPEAT_LOG_S = 30.0  # a failure that repeats unchanged every tick is logged at info this often


@dataclass
class TickReport:
    observation: Observation
    plan: Plan
    results: tuple[StepResult, ...]
    duration_s: float


@dataclass
class Agent:
    timing: Timing
    observer: Observer
    executor: Executor
    timeline: Timeline | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic
    on_tick: Callable[[TickReport], None] | None = None
    # called with each plan before it runs: the systemd READY=1 goes out on the first (hacontrol.agent.build)
    on_plan: Callable[[Observation, Plan], None] | None = None
    config_sync: ConfigSync | None = None
    last: TickReport | None = None
    _last_reason: Any = None
    _last_failure: tuple[tuple[str, str], ...] = ()
    _failure_logged_at: float = float("-inf")

    def tick(self) -> TickReport:
        start = self.clock()
        self.wake.clear()
        obs = self.observer.observe(start + max(self.timing.operation_timeout_s, self.timing.loop_interval_s))
        if self.config_sync is not None:
            try:
                self.config_sync.tick(self.clock() + self.timing.operation_timeout_s)
            except Exception:  # a configuration problem must never stop the loop that keeps the lease
                log.exception("config_sync_crashed")
            if self.config_sync.dirty:  # our report changed outside the core's view: make it publish again
                obs = replace(obs, coord=replace(obs.coord, published=None))
        plan = decide(obs, self.clock(), self.timing)
        if self.on_plan is not None:
            self.on_plan(obs, plan)
        results = self.executor.run(plan) if plan.actions else ()
        report = TickReport(obs, plan, results, self.clock() - start)
        self._log(report)
        if self.timeline is not None:
            self.timeline.tick(obs, plan, results, observed_at=start)
        if self.on_tick is not None:
            self.on_tick(report)
        self.last = report
        return report

    def run(self, stop: threading.Event, max_ticks: int | None = None) -> None:
        burst = 0
        ticks = 0
        while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
            report = self.tick()
            ticks += 1
            progressed = [r.ok for r in report.results if r.action not in ROUTINE_ACTIONS]
            if progressed and all(progressed) and burst < BURST_LIMIT:
                burst += 1
                continue
            burst = 0
            remaining = self.timing.loop_interval_s - report.duration_s
            if remaining > 0:
                self.wake.wait(remaining)

    def _log(self, r: TickReport) -> None:
        """One event per tick; what the peer link heard is added when the plan rests on it."""
        c, d = r.observation.coord, r.observation.datapath
        acting = [a for a in r.results if a.action not in ROUTINE_ACTIONS]
        changed = r.plan.reason is not self._last_reason
        self._last_reason = r.plan.reason
        failure = tuple((a.action, a.error) for a in r.results if not a.ok)
        now = self.clock()
        if failure and failure == self._last_failure and all(not a.ok for a in acting) and not changed:
            # the same step failing the same way every tick: say so again only every REPEAT_LOG_S
            repeat_due = now - self._failure_logged_at >= REPEAT_LOG_S
            if repeat_due:
                self._failure_logged_at = now
            emit = log.info if repeat_due else log.debug
        else:
            if failure:
                self._failure_logged_at = now
            emit = log.info if (acting or changed) else log.debug
        self._last_failure = failure
        emit(
            "tick",
            **_link_evidence(r, now),
            reason=r.plan.reason.value,
            role=r.plan.role.value,
            session=c.session.value,
            leader=None if c.leader is None else f"{c.leader.node}@{c.leader.epoch}{'*' if c.leader.ours else ''}",
            epoch=c.epoch,
            own_alua=None if d.own_group is None else d.own_group.label,
            vips=sorted(d.vips),
            actions=[f"{a.action}:{'ok' if a.ok else 'FAILED'}:{a.duration_s * 1000:.1f}ms" for a in r.results],
            errors=[f"{a.action}: {a.error}" for a in r.results if not a.ok],
            frozen=[a.name for a in r.plan.frozen],
            blockers=[b.name for b in r.plan.blockers],
            tick_ms=round(r.duration_s * 1000, 1),
        )


LINK_REASONS = ("fast_takeover", "failsafe", "promised")


def _link_evidence(r: TickReport, now: float) -> dict[str, Any]:
    """For a plan that rests on the peer link: how long ago each path and the peer's alive znode were heard."""
    if r.plan.reason.value not in LINK_REASONS:
        return {}
    link, alive = r.observation.link, r.observation.coord.peer_alive_at
    return {"peer_heard_ago": [None if t is None else round(now - t, 3) for t in link.heard],
            "peer_alive_ago": None if alive is None else round(now - alive, 3),
            "promise_confirmed_ago": None if link.promise_confirmed_at is None
            else round(now - link.promise_confirmed_at, 3)}
