"""systemctl stop of the agent (hacontrol.agent.main._shutdown): the order of its steps, with doubles for the
observer, the executor, the link and the session."""

from __future__ import annotations

from types import SimpleNamespace

from hacontrol.agent import main
from hacontrol.core.model import Role, SessionState
from hacontrol.core.peer import Advert
from tests.unit.builders import SB, active, with_coord, with_datapath


class Steps:
    def __init__(self, observations):
        self.observations = list(observations)
        self.log: list[object] = []

    def observe(self, deadline):
        obs = self.observations.pop(0) if len(self.observations) > 1 else self.observations[0]
        self.log.append(("observe", obs.coord.session))
        return obs

    def run(self, plan):
        self.log.append(("run", [a.name for a in plan.actions]))
        return tuple(SimpleNamespace(action=a.name, ok=True) for a in plan.actions)

    def advertise(self, advert: Advert):
        self.log.append(("advertise", advert))

    def stop(self):
        self.log.append(("stop",))


def controller(steps: Steps, coordinator_leader: str | None = "b"):
    leader = None if coordinator_leader is None else SimpleNamespace(node=coordinator_leader)
    return SimpleNamespace(
        notifier=SimpleNamespace(stopping=lambda takes_s: None),
        agent=SimpleNamespace(observer=steps, executor=steps),
        link=SimpleNamespace(advertise=steps.advertise, stop=steps.stop, interval_s=0.001),
        session=SimpleNamespace(stop=lambda: steps.log.append(("session_stop",))),
        coordinator=SimpleNamespace(observe=lambda deadline: SimpleNamespace(leader=leader)),
        peer="b")


def stepped(o):
    """The same observation once the data path is down."""
    return with_datapath(o, own_group=SB, vips=frozenset())


def test_a_stop_with_a_suspended_session_steps_down_says_so_and_releases_once_reconnected():
    suspended = with_coord(active(), session=SessionState.SUSPENDED)
    steps = Steps([suspended, stepped(suspended), stepped(suspended), stepped(active())])
    main._shutdown(controller(steps), wait_s=1.0)
    runs = [entry[1] for entry in steps.log if entry[0] == "run"]
    assert "ReleaseLeadership" not in runs[0] and "SetAlua" in runs[0]  # the data path first, whatever ZooKeeper
    assert "ReleaseLeadership" in runs[-1]  # then, reconnected, the report and the release
    said = [entry[1] for entry in steps.log if entry[0] == "advertise"]
    assert said and said[0].role is Role.STANDBY and not said[0].serving and not said[0].leading
    assert steps.log.index(("advertise", said[0])) < steps.log.index(("session_stop",))


def test_a_stop_whose_step_down_failed_does_not_claim_to_serve_nothing():
    steps = Steps([active()])  # every observation, the one after the step-down too, still shows it serving
    steps.run = lambda plan: tuple(SimpleNamespace(action=a.name, ok=a.name != "SetAlua") for a in plan.actions)
    main._shutdown(controller(steps), wait_s=0.1)
    assert not [entry for entry in steps.log if entry[0] == "advertise"]
