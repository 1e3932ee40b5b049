"""A tick that hangs leaves its stack in the log: the loop arms faulthandler for ``stall_dump_s`` around each
tick, so a loop that let the hardware watchdog fire says where it was waiting (issue #16: a controller reset
with the last second of its journal lost)."""

from __future__ import annotations

import threading
import time

import pytest

from hacontrol.agent.loop import Agent
from hacontrol.core.timing import Timing


class StuckObserver:
    def observe(self, deadline: float) -> None:
        _waiting_on_something_that_never_answers()


def _waiting_on_something_that_never_answers() -> None:
    time.sleep(0.6)
    raise RuntimeError("gave up")


def _agent(stall_dump_s: float | None) -> Agent:
    return Agent(timing=Timing(), observer=StuckObserver(), executor=None,  # type: ignore[arg-type]
                 stall_dump_s=stall_dump_s)


def test_a_tick_longer_than_the_stall_limit_dumps_where_it_waits(capfd):
    with pytest.raises(RuntimeError, match="gave up"):
        _agent(0.2).run(threading.Event(), max_ticks=1)
    err = capfd.readouterr().err
    assert "_waiting_on_something_that_never_answers" in err, err


def test_no_dump_when_off_or_when_the_tick_is_quick(capfd):
    with pytest.raises(RuntimeError):
        _agent(None).run(threading.Event(), max_ticks=1)
    with pytest.raises(RuntimeError):
        _agent(5.0).run(threading.Event(), max_ticks=1)
    time.sleep(0.1)
    assert "_waiting_on_something_that_never_answers" not in capfd.readouterr().err
