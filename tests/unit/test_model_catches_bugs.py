"""The model can fail: known-bad variants of decide() are caught by the state machine.

Each test breaks one rule of the core on purpose (monkeypatch), runs the
hypothesis state machine, and asserts that it reports a violation. If one of
these ever passes, the model has gone blind to that class of bug.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

import hacontrol.core.decide as core
from hacontrol.core.model import AluaState, SessionState
from hacontrol.simulation.cluster import Profile
from tests.unit.test_model_statemachine import LeaseAlone, TwoControllers


class HandoverRaces(LeaseAlone):
    """The lease-alone model restricted to what a hand-over race needs: VIP-only pairs, no faults but
    switchovers and waits (with interrupted plans). Finds an ordering bug in far fewer examples.
    Redefining a rule's method without @rule removes that rule from this machine."""

    profiles = st.builds(Profile, pr=st.just(True), alua=st.just(False), power_fencing=st.just(False),
                         hardware_watchdog=st.just(False), port_takeover=st.just(False))

    def crash_agent(self, node: str) -> None: ...

    def restart_agent(self, node: str) -> None: ...

    def freeze(self, node: str, factor: float) -> None: ...

    def power_cycle(self, node: str) -> None: ...

    def partition_from_zookeeper(self, node: str, cut: bool) -> None: ...

    def lose_disk_path(self, node: str, cut: bool) -> None: ...

    def break_fence_device(self, node: str, broken: bool) -> None: ...

    def maintenance(self, on: bool) -> None: ...


HUNT = settings(max_examples=1000, stateful_step_count=30, deadline=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate], database=None)


def _hunt(machine, examples: int = 1000) -> str:
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(machine, settings=settings(HUNT, max_examples=examples))
    return str(caught.value)


def test_promoting_without_fencing_is_caught(monkeypatch):
    monkeypatch.setattr(core, "_fenced", lambda obs, epoch: True)
    message = _hunt(TwoControllers)
    assert "disk" in message or "two writers" in message


def test_treating_suspended_as_connected_is_caught(monkeypatch):
    """CURATOR-460: a leader that keeps renewing while suspended is still serving when the peer fences it."""
    original = core._decide

    def tolerant(obs, now, timing):
        if obs.coord.session is SessionState.SUSPENDED:
            coord = dataclasses.replace(obs.coord, session=SessionState.CONNECTED, lease_confirmed_at=now)
            obs = dataclasses.replace(obs, coord=coord)
        return original(obs, now, timing)

    monkeypatch.setattr(core, "_decide", tolerant)
    assert "refuse its writes" in _hunt(LeaseAlone)


def test_ignoring_the_demote_deadline_is_caught(monkeypatch):
    original = core.lease_valid_until
    monkeypatch.setattr(core, "lease_valid_until",
                        lambda obs, timing: None if (u := original(obs, timing)) is None else u + 3600)
    assert "refuse its writes" in _hunt(LeaseAlone)


def test_standby_reporting_unavailable_is_caught(monkeypatch):
    """A standby that reports its group Unavailable (ESXi may treat the paths as dead) must be caught."""
    monkeypatch.setattr(core, "STANDBY", AluaState.UNAVAILABLE)
    assert "reports unavailable" in _hunt(TwoControllers)


def test_handing_over_before_stepping_down_is_caught(monkeypatch):
    """Releasing leadership before the data path is down lets the target fence a controller that still serves."""
    original = core._handle_switchover

    def eager(obs, now, head, until):
        plan = original(obs, now, head, until)
        if plan is None or plan.reason is not core.Reason.HANDING_OFF:
            return plan
        release = [a for a in plan.actions if a.name == "ReleaseLeadership"]
        rest = [a for a in plan.actions if a.name != "ReleaseLeadership"]
        return dataclasses.replace(plan, actions=(*release, *rest))

    monkeypatch.setattr(core, "_handle_switchover", eager)
    _hunt(HandoverRaces, examples=1000)
