"""IpmiFencer: the ipmitool command line, output parsing, the poll-until-off loop, and secrecy.

Outputs are the ones ipmitool 1.8.19 printed against OpenIPMI's ipmi_sim (see the integration test): a status
line on stdout, and "Unable to Get Channel Cipher Suites" on stderr when the BMC lacks that command.
"""

import subprocess

import pytest
from structlog.testing import capture_logs

from hacontrol.adapters.fencing.ipmi import IpmiFencer, parse_power_status
from hacontrol.agent.protocols import AdapterError
from hacontrol.config.schema import FenceMethod, Secret

PASSWORD = "pa55-Wörd-" + "x" * 8
ON = "Chassis Power is on\nUnable to Get Channel Cipher Suites\n"
OFF = "Chassis Power is off\n"
OFF_ACCEPTED = "Unable to Get Channel Cipher Suites\nChassis Power Control: Down/Off\n"
OFF_FAILED = "Set Chassis Power Control to Down/Off failed: Invalid data field in request\n"
NO_SESSION = "Error: Unable to establish IPMI v2 / RMCP+ session\n"


def method(**kwargs) -> FenceMethod:
    base = {"method": "ipmi", "timeout_s": 10.0, "host": "bmc-b.example", "port": 6230, "username": "fence",
            "password": Secret(PASSWORD)}
    return FenceMethod(**{**base, **kwargs})


class Bmc:
    """A scripted ipmitool: answers from lists per command; advances a fake clock per call."""

    def __init__(self, off=None, status=None, call_s=0.1):
        self.off = list(off or [(0, OFF_ACCEPTED)])
        self.status = list(status or [(0, OFF)])
        self.calls = []
        self.now = 0.0
        self.call_s = call_s

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def run(self, argv, env, timeout_s):
        self.calls.append((list(argv), dict(env), timeout_s))
        self.now += self.call_s
        script = self.off if argv[-1] == "off" else self.status
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def fencer(bmc: Bmc, **kwargs) -> IpmiFencer:
    return IpmiFencer(method(**kwargs), runner=bmc.run, clock=bmc.clock, sleep=bmc.sleep, poll_interval_s=0.5)


def test_command_line_carries_no_secret():
    f = IpmiFencer(method(), cipher_suite=3)
    assert f.argv("chassis", "power", "off") == [
        "ipmitool", "-I", "lanplus", "-H", "bmc-b.example", "-p", "6230", "-U", "fence", "-E", "-N", "1", "-R", "1",
        "-C", "3", "chassis", "power", "off"]
    assert f.environment()["IPMI_PASSWORD"] == PASSWORD
    assert PASSWORD not in repr(f) and PASSWORD not in str(f.__dict__)


@pytest.mark.parametrize(("output", "state"), [(ON, "on"), (OFF, "off"), ("Chassis Power is OFF", "off"),
                                                (NO_SESSION, None), ("", None)])
def test_power_status_parsing(output, state):
    assert parse_power_status(output) == state


def test_off_confirmed_at_once():
    bmc = Bmc()
    assert fencer(bmc).fence("ctrl-b", 3, 100.0).startswith("ctrl-b off (BMC bmc-b.example confirmed")
    assert [c[0][-1] for c in bmc.calls] == ["off", "status"]
    assert all(c[1]["IPMI_PASSWORD"] == PASSWORD and PASSWORD not in c[0] for c in bmc.calls)


def test_polls_while_the_bmc_still_reports_on():
    bmc = Bmc(status=[(0, ON), (0, ON), (0, ON), (0, OFF)])
    fencer(bmc).fence("ctrl-b", 3, 100.0)
    assert [c[0][-1] for c in bmc.calls] == ["off", "status", "status", "status", "status"]


def test_refused_off_is_sent_again_next_round():
    bmc = Bmc(off=[(1, OFF_FAILED), (0, OFF_ACCEPTED)], status=[(0, ON), (0, ON), (0, OFF)])
    fencer(bmc).fence("ctrl-b", 3, 100.0)
    assert [c[0][-1] for c in bmc.calls] == ["off", "status", "off", "status", "status"]


def test_off_already_confirmed_by_status_needs_no_accepted_request():
    bmc = Bmc(off=[(1, NO_SESSION)], status=[(0, OFF)])
    assert "off" in fencer(bmc).fence("ctrl-b", 3, 100.0)


def test_never_off_fails_within_the_budget_naming_host_and_step():
    bmc = Bmc(status=[(0, ON)])
    with pytest.raises(AdapterError) as caught:
        fencer(bmc, timeout_s=3.0).fence("ctrl-b", 3, 100.0)
    message = str(caught.value)
    assert message.startswith("ipmi:bmc-b.example: confirming power off of ctrl-b not confirmed within 3 s")
    assert "(last: power status: on)" in message and "check the BMC address" in message
    assert bmc.now <= 3.0 + 0.5 and len(bmc.calls) < 20


def test_the_callers_deadline_wins_over_the_methods_timeout():
    bmc = Bmc(status=[(0, ON)])
    with pytest.raises(AdapterError):
        fencer(bmc, timeout_s=30.0).fence("ctrl-b", 3, 1.0)
    assert bmc.now <= 1.5
    assert all(timeout <= 1.0 for *_, timeout in bmc.calls)


def test_unreachable_bmc_reports_the_power_off_step():
    bmc = Bmc(off=[(1, NO_SESSION)], status=[(1, NO_SESSION)])
    with pytest.raises(AdapterError, match=r"power off of ctrl-b not confirmed .*Unable to establish"):
        fencer(bmc, timeout_s=2.0).fence("ctrl-b", 3, 100.0)


def test_a_hung_ipmitool_is_a_failed_call_not_a_hang():
    bmc = Bmc(off=[subprocess.TimeoutExpired("ipmitool", 5)], status=[subprocess.TimeoutExpired("ipmitool", 5)])
    with pytest.raises(AdapterError, match="timed out after"):
        fencer(bmc, timeout_s=2.0).fence("ctrl-b", 3, 100.0)


def test_missing_ipmitool_says_so():
    bmc = Bmc(off=[FileNotFoundError(2, "No such file or directory")],
              status=[FileNotFoundError(2, "No such file or directory")])
    with pytest.raises(AdapterError, match="is ipmitool installed"):
        fencer(bmc, timeout_s=1.0).fence("ctrl-b", 3, 100.0)


def test_password_never_leaks_even_when_the_bmc_echoes_it():
    echo = f"Error: user fence password {PASSWORD} rejected\n"
    bmc = Bmc(off=[(1, echo)], status=[(1, echo)])
    with capture_logs() as logs, pytest.raises(AdapterError) as caught:
        fencer(bmc, timeout_s=1.0).fence("ctrl-b", 3, 100.0)
    assert PASSWORD not in str(caught.value) and "***" in str(caught.value)
    assert PASSWORD not in repr(logs)


@pytest.mark.parametrize(("kwargs", "message"), [({"password": None}, "needs a password"),
                                                  ({"password": Secret("")}, "needs a password"),
                                                  ({"host": ""}, "needs the BMC's host")])
def test_incomplete_methods_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IpmiFencer(method(**kwargs))
