"""Rig.ensure_running, which the chaos restore and agents.reset use to get a controller back, against scripted VM
histories (no rig needed): the case CI met was a controller reset by its hardware watchdog ("running", no ssh)
and then power-fenced by its peer ("off"), which a single look at the VM state missed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "vagrant"))

from rigctl import driver
from rigctl.config import Paths
from rigctl.proc import RigError


class ScriptedRig(driver.Rig):
    """A Rig whose VM states and ssh answers come from a script, one entry per look; records what it did."""

    def __init__(self, tmp: Path, states: list[str], ssh: list[bool]) -> None:
        super().__init__(Paths(repo=tmp, run=tmp / "run", cache=tmp / "cache"), quiet=True)
        self.states, self.answers, self.did = states, ssh, []

    def vm_state(self, node: str) -> str:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def resume_vm(self, node: str) -> None:
        self.did.append("resume")

    def power_on(self, node: str, wait: bool = True) -> str:
        self.did.append("power_on")
        return "running"

    def guest(self, node: str):  # type: ignore[override]
        rig = self

        class Answering:
            def reachable(self, timeout: float = 8) -> bool:
                return rig.answers.pop(0) if len(rig.answers) > 1 else rig.answers[0]

        return Answering()


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(driver.time, "sleep", lambda s: None)


def test_a_running_vm_that_answers_is_left_alone(tmp_path):
    rig = ScriptedRig(tmp_path, ["running"], [True])
    assert rig.ensure_running("ctrl-a") == "reachable" and rig.did == []


def test_a_rebooting_vm_that_its_peer_powers_off_is_powered_on(tmp_path):
    rig = ScriptedRig(tmp_path, ["running", "running", "off"], [False, False])
    assert rig.ensure_running("ctrl-a") == "powered on" and rig.did == ["power_on"]


def test_a_paused_vm_is_resumed(tmp_path):
    rig = ScriptedRig(tmp_path, ["paused", "running"], [True])
    assert rig.ensure_running("ctrl-a") == "resumed" and rig.did == ["resume"]


def test_a_vm_that_never_answers_is_an_error_naming_it(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(driver.time, "monotonic", lambda: float(next(clock)))
    rig = ScriptedRig(tmp_path, ["running"], [False])
    with pytest.raises(RigError, match="ctrl-a did not answer ssh within 60 s"):
        rig.ensure_running("ctrl-a", timeout=60)
