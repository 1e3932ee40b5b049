"""The executor after a failed step: the rest of the plan is skipped, but the member report still goes out (so
``hactl status`` shows a controller whose target configuration is refused, instead of "no session"); the loop
logs a failure that repeats unchanged every tick only once per REPEAT_LOG_S."""

from __future__ import annotations

from typing import Any

import pytest

from hacontrol.agent import loop as loop_mod
from hacontrol.agent.execute import Executor
from hacontrol.agent.loop import Agent, TickReport
from hacontrol.agent.protocols import AdapterError
from hacontrol.core import actions as A
from hacontrol.core.decide import Plan, Reason
from hacontrol.core.model import Role
from hacontrol.core.timing import Timing
from tests.unit.builders import standby


class RefusingTarget:
    def __init__(self) -> None:
        self.calls = 0

    def configure(self, deadline: float) -> str:
        self.calls += 1
        raise AdapterError("lun[0].thin = True: the device does not support discard")


class Sink:
    def __init__(self) -> None:
        self.published: list[tuple[Any, dict[str, Any]]] = []
        self.armed = 0

    def publish(self, report: Any, extra: dict[str, Any], deadline: float) -> None:
        self.published.append((report, extra))

    def arm(self) -> None:
        self.armed += 1


def _executor(target: Any, sink: Sink) -> Executor:
    return Executor(timing=Timing(), coordinator=sink, target=target, network=None, fencing=None,  # type: ignore[arg-type]
                    watchdog=sink, vips={}, publish_extra=lambda: {"last_error": "x"})  # type: ignore[arg-type]


def _publish() -> A.Publish:
    return A.Publish(role=Role.STANDBY, own_alua=None, vips=frozenset(), ready=False, epoch_seen=0,
                     reason="not_ready", blockers=("NOT_CONFIGURED",))


def test_a_failed_step_skips_the_rest_but_still_publishes():
    target, sink = RefusingTarget(), Sink()
    plan = Plan(Reason.NOT_READY, Role.STANDBY, (A.ConfigureTarget(), A.ArmWatchdog(), _publish()))
    results = _executor(target, sink).run(plan)
    assert [(r.action, r.ok) for r in results] == [("ConfigureTarget", False), ("Publish", True)]
    assert "does not support discard" in results[0].error
    assert sink.armed == 0 and len(sink.published) == 1
    assert sink.published[0][0].blockers == ("NOT_CONFIGURED",)


class RecordingLog:
    """Stands in for the loop's structlog logger: keeps (level, event, fields) of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.calls.append(("info", event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self.calls.append(("debug", event, fields))


def test_a_failure_repeating_every_tick_is_logged_once_per_interval(monkeypatch):
    target, sink = RefusingTarget(), Sink()
    now = [100.0]
    agent = Agent(timing=Timing(), observer=None, executor=_executor(target, sink),  # type: ignore[arg-type]
                  clock=lambda: now[0])
    plan = Plan(Reason.NOT_READY, Role.STANDBY, (A.ConfigureTarget(), _publish()))
    recorder = RecordingLog()
    monkeypatch.setattr(loop_mod, "log", recorder)

    def tick() -> None:
        results = agent.executor.run(plan)
        agent._log(TickReport(standby(), plan, results, 0.01))

    for _ in range(5):
        tick()
        now[0] += 0.2
    assert [level for level, _, _ in recorder.calls] == ["info", "debug", "debug", "debug", "debug"]
    now[0] += loop_mod.REPEAT_LOG_S
    tick()
    assert target.calls == 6 and len(recorder.calls) == 6  # every tick logs; only the level changes
    level, event, fields = recorder.calls[-1]
    assert (level, event) == ("info", "tick")
    assert fields["errors"] == ["ConfigureTarget: lun[0].thin = True: the device does not support discard"]


def test_a_hand_off_report_never_follows_a_failed_step():
    target, sink = RefusingTarget(), Sink()
    handoff = A.Publish(role=Role.STANDBY, own_alua=None, vips=frozenset(), ready=False, epoch_seen=3,
                        handed_off="switchover")
    results = _executor(target, sink).run(Plan(Reason.NOT_READY, Role.STANDBY, (A.ConfigureTarget(), handoff)))
    assert [(r.action, r.ok) for r in results] == [("ConfigureTarget", False)] and sink.published == []


def test_moving_a_port_gets_the_ports_budget_not_the_operation_timeout():
    seen = []

    class Ports:
        def adopt_peer(self, epoch: int, deadline: float) -> None:
            seen.append(deadline - now[0])

    now = [50.0]
    ex = _executor(RefusingTarget(), Sink())
    ex.clock, ex.ports, ex.ports_budget_s = (lambda: now[0]), Ports(), 1.35
    ex.after_adopt = lambda: "tickled 3 peer connection(s)"
    results = ex.run(Plan(Reason.ACTIVE, Role.ACTIVE, (A.AdoptPeerPorts(epoch=4),), lease_valid_until=99.0))
    assert seen == [pytest.approx(1.35)] and results[0].ok and results[0].detail == "tickled 3 peer connection(s)"


class KickCounter(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.kicks = 0

    def kick(self) -> None:
        self.kicks += 1


class Configured:
    def configure(self, deadline: float) -> str:
        return "ok"


@pytest.mark.parametrize(("now", "kicked"), [(10.0, 1), (10.5, 1), (10.501, 0)])
def test_a_kick_is_carried_out_only_until_its_confirmation_runs_out_and_a_late_one_ends_nothing(now, kicked):
    sink = KickCounter()
    ex = _executor(Configured(), sink)
    ex.clock = lambda: now
    plan = Plan(Reason.ACTIVE, Role.ACTIVE, (A.KickWatchdog(until=10.5), A.ConfigureTarget(), _publish()),
                lease_valid_until=20.0)
    results = ex.run(plan)
    assert sink.kicks == kicked
    assert [(r.action, r.ok) for r in results] == [("KickWatchdog", bool(kicked)), ("ConfigureTarget", True),
                                                   ("Publish", True)]
    if not kicked:
        assert "past the confirmation" in results[0].error
