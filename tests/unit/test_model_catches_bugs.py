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
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

import hacontrol.core.decide as core
from hacontrol.adapters.peerlink.protocol import LinkState
from hacontrol.core.model import AluaState, FenceRecord, SessionState
from hacontrol.core.timing import Timing
from hacontrol.simulation.cluster import Cluster, Profile
from hacontrol.simulation.invariants import SAFETY
from tests.unit.test_model_statemachine import TIMINGS, LeaseAlone, PeerLinkOn, TwoControllers


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


class LinkRaces(PeerLinkOn):
    """The peer link on, and only the faults its two uses must survive: freezes, ZooKeeper partitions, crashes
    and cut or lossy paths. With or without a hardware watchdog and power fencing (a fast takeover needs power),
    since either of those alone can hide a broken rule."""

    profiles = st.builds(lambda power, watchdog: Profile(
        pr=True, alua=True, power_fencing=power, hardware_watchdog=watchdog, peer_link=True, fast_takeover=power,
        failsafe=True), power=st.booleans(), watchdog=st.booleans())

    def power_cycle(self, node: str) -> None: ...

    def lose_disk_path(self, node: str, cut: bool) -> None: ...

    def break_fence_device(self, node: str, broken: bool) -> None: ...

    def maintenance(self, on: bool) -> None: ...

    def switchover(self, to: str) -> None: ...

    def duplicate_link(self, on: bool) -> None: ...

    def cut_link_path(self, path: int, cut: bool) -> None: ...

    def lossy_link_path(self, path: int, loss: float, seed: int) -> None: ...

    def delay_link_path(self, path: int, factor: float) -> None: ...

    def replay_link(self, count: int) -> None: ...

    @rule(cut=st.booleans())
    def cut_link(self, cut: bool) -> None:
        """Every path at once (the broken rules need the link gone, and one rule finds that sooner than two)."""
        for p in self.cl.net.paths:
            p.cut = cut


class FailsafeRaces(LinkRaces):
    """LinkRaces with neither a hardware watchdog nor power fencing (either would hide a broken failsafe: the
    watchdog resets the partitioned active, power fencing switches it off), with the peer link already cut, so
    what is left to find is a ZooKeeper partition of the active and a wait."""

    profiles = st.just(Profile(pr=True, alua=True, power_fencing=False, hardware_watchdog=False, peer_link=True,
                               fast_takeover=False, failsafe=True))

    @initialize(data=st.data(), timing=TIMINGS)
    def start(self, data: st.DataObject, timing: Timing) -> None:
        self.cl = Cluster(timing, data.draw(self.profiles, label="profile"))
        self.cl.checks.extend(SAFETY)
        self.cl.advance(1.0)
        for path in self.cl.net.paths:
            path.cut = True


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


def test_failsafe_without_the_peers_promise_is_caught(monkeypatch):
    """An active that keeps serving without ZooKeeper whether or not the peer promised anything."""
    def reckless(obs, timing):
        record = obs.storage.last_fence
        if not obs.spec.failsafe or not obs.datapath.serving or record is None or not record.ok:
            return None
        return (obs.coord.lease_confirmed_at or record.at) + 3600

    monkeypatch.setattr(core, "failsafe_until", reckless)
    message = _hunt(FailsafeRaces, examples=300)
    assert "refuse its writes" in message or "two writers" in message


def test_a_standby_that_breaks_its_promise_is_caught(monkeypatch):
    """A standby that claims although it promised the active (serving without ZooKeeper) not to."""
    monkeypatch.setattr(core, "promised", lambda obs, now: False)
    monkeypatch.setattr(LinkState, "stop_promising", lambda self, now: None)
    message = _hunt(LinkRaces, examples=300)
    assert "refuse its writes" in message or "two writers" in message


def test_a_fast_takeover_that_fences_the_disks_only_is_caught(monkeypatch):
    """Why a fast takeover needs a confirmed power-off: a peer whose agent is only frozen still serves from its
    kernel, and once its keys are gone initiators get RESERVATION CONFLICT from it."""
    def disks_only(self, c, a):
        ok = self._fence_pr(c, a.epoch)
        c.last_fence = FenceRecord(a.epoch, ok, self.now, power_confirmed=ok)
        return ok

    monkeypatch.setattr(Cluster, "_do_FenceDeadPeer", disks_only)
    assert "refuse its writes" in _frozen_active_with_a_watchdog()


def test_the_frozen_active_scenario_passes_with_the_real_rules():
    """The scenario above, unbroken: the power-off comes first, so the frozen active serves nothing."""
    with pytest.raises(pytest.fail.Exception, match="no violation"):
        _frozen_active_with_a_watchdog()


def _frozen_active_with_a_watchdog() -> str:
    """The hunt for this bug depends on hypothesis's search order (it once found it in 300 examples, and lost it
    after an unrelated change), so the scenario is written out: settle, freeze the active agent (its kernel
    still serves, its watchdog has not fired yet), let the standby's fast takeover run."""
    timing = Timing()
    cl = Cluster(timing, Profile(pr=True, alua=True, power_fencing=True, hardware_watchdog=True, peer_link=True,
                                 fast_takeover=True, failsafe=True))
    cl.checks.extend(SAFETY)
    cl.advance(1.0)
    (active,) = cl.active_nodes()
    cl.freeze(active, 0.5 * timing.session_timeout_s)
    with pytest.raises(AssertionError) as caught:
        cl.advance(3.0)
        pytest.fail(f"no violation: {cl.active_nodes()} active after the freeze")
    return str(caught.value)
