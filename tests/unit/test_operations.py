"""Operations: the systemd units verify, the notifier speaks sd_notify, logs never carry secrets."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from hacontrol import logs
from hacontrol.adapters.watchdog import SystemdNotifier, device_timeout_s
from hacontrol.config import load
from hacontrol.config.schema import Secret

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "systemd").glob("*.service"))


def _rendered(tmp_path: Path) -> list[Path]:
    """The units with their install paths pointed at this test's interpreter, so verify finds the binaries."""
    bindir = str(Path(sys.executable).parent)
    out = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/hacontrol/venv/bin", bindir)
        target = tmp_path / unit.name
        target.write_text(text)
        out.append(target)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify_clean(tmp_path):
    units = _rendered(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                            timeout=60, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "rtslib-fb-targetctl.service" not in line and "zookeeper" not in line.lower()]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_agent_unit_is_notify_with_a_watchdog_matching_the_default_session():
    text = (ROOT / "systemd" / "hacontrol.service").read_text()
    assert "Type=notify" in text and "WatchdogSec=2s" in text
    assert "ExecStopPost=/opt/hacontrol/venv/bin/hactl local step-down" in text
    assert load(ROOT / "examples" / "hacontrol.toml").timing.session_timeout_s == 2.0


def test_notifier_sends_ready_and_watchdog_to_the_notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        n = SystemdNotifier(path)
        n.alive("starting: no_session")
        n.kick()  # before READY=1: no watchdog kick at all
        n.ready("standby: standby")
        n.alive("active: active")
        n.kick()
        assert sock.recv(4096).decode() == "STATUS=starting: no_session"
        assert sock.recv(4096).decode() == "READY=1\nSTATUS=standby: standby"
        assert sock.recv(4096).decode() == "WATCHDOG=1\nSTATUS=active: active"
        assert sock.recv(4096).decode() == "WATCHDOG=1"
    finally:
        sock.close()
    assert not SystemdNotifier("").enabled


def test_stopping_stretches_systemds_watchdog_over_the_hand_over(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # WatchdogSec=2s in systemd/hacontrol.service
        SystemdNotifier(path).stopping(takes_s=15.0)
        assert sock.recv(4096).decode() == "STOPPING=1\nWATCHDOG=1\nWATCHDOG_USEC=15000000"
        monkeypatch.delenv("WATCHDOG_USEC")  # no systemd watchdog: nothing to stretch
        SystemdNotifier(path).stopping(takes_s=15.0)
        assert sock.recv(4096).decode() == "STOPPING=1"
    finally:
        sock.close()


def test_hardware_watchdog_timeout_is_whole_seconds_and_refuses_negative_slack():
    assert device_timeout_s(4.0, 0.6) == 3
    assert device_timeout_s(2.0, 0.4) == 1
    with pytest.raises(ValueError, match="at least 1"):
        device_timeout_s(1.0, 0.4)


def test_log_processor_masks_secrets_anywhere():
    out = io.StringIO()
    logs.configure("json", "info", stream=out)
    try:
        structlog.get_logger("t").info("login", user="esx01", secret="Esx01-Chap-Key1",
                                       chap=Secret("Array1-Chap-01"),
                                       auth={"password": "zk-digest-password", "userid": "array1"},
                                       args=["ok", Secret("hidden-in-a-list")])
    finally:
        logs.configure("json", "warning")
    line = out.getvalue()
    for secret in ("Esx01-Chap-Key1", "Array1-Chap-01", "zk-digest-password", "hidden-in-a-list"):
        assert secret not in line
    doc = json.loads(line)
    assert doc["event"] == "login" and doc["user"] == "esx01" and doc["auth"]["userid"] == "array1"
    assert doc["secret"] == doc["chap"] == doc["auth"]["password"] == "***"


def test_a_logged_config_never_shows_its_secrets():
    out = io.StringIO()
    logs.configure("json", "info", stream=out)
    try:
        cfg = load(ROOT / "examples" / "hacontrol.toml")
        structlog.get_logger("t").info("config", cfg=repr(cfg), zk=cfg.zookeeper, target=cfg.targets[0])
    finally:
        logs.configure("json", "warning")
    for secret in ("Array1-Chap-01", "zk-digest-password", "ipmi-secret-a", "disc0very-Secr3t"):
        assert secret not in out.getvalue()


def test_bash_completion_knows_every_verb(tmp_path):
    from hacontrol.cli.completion import script
    from hacontrol.cli.main import parser

    text = script(parser())
    path = tmp_path / "hactl.bash"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0

    def complete(*words: str) -> list[str]:
        cmd = (f"source {path}; COMP_WORDS=(hactl {' '.join(words)}); COMP_CWORD={len(words)}; _hactl; "
               'echo "${COMPREPLY[@]}"')
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout.split()

    assert {"status", "failover", "maintenance", "history", "config", "lab", "probe"} <= set(complete(""))
    assert [w for w in complete("lab", "kill", "") if not w.startswith("-")] == ["ctrl-a", "ctrl-b"]
    assert "apply" in complete("config", "")
    assert complete("maintenance", "o") == ["off", "on"]


class _Notes:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self, status: str) -> None:
        self.sent.append(status)


def test_ready_goes_out_once_the_role_is_decided_and_before_the_first_plan_runs():
    from hacontrol.agent.build import ready_once
    from hacontrol.core.actions import ConfigureTarget, Publish
    from hacontrol.core.decide import Plan, Reason
    from hacontrol.core.model import Role

    notes, now = _Notes(), [0.0]
    on_plan = ready_once(notes, starting_bound_s=4.0, clock=lambda: now[0])  # type: ignore[arg-type]
    on_plan(None, Plan(Reason.NOT_READY, Role.STARTING))  # type: ignore[arg-type]
    assert notes.sent == []  # no session yet: not standing by
    steps = (ConfigureTarget(), Publish(Role.STANDBY, None, frozenset(), False, 0))
    on_plan(None, Plan(Reason.NOT_READY, Role.STANDBY, steps))  # type: ignore[arg-type]
    on_plan(None, Plan(Reason.NOT_READY, Role.STANDBY))  # type: ignore[arg-type]
    assert notes.sent == ["standby: not_ready (ConfigureTarget)"]


def test_ready_goes_out_without_a_session_after_the_bound():
    from hacontrol.agent.build import ready_once
    from hacontrol.core.decide import Plan, Reason
    from hacontrol.core.model import Role

    notes, now = _Notes(), [0.0]
    on_plan = ready_once(notes, starting_bound_s=4.0, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] = 4.5
    on_plan(None, Plan(Reason.NOT_READY, Role.STARTING))  # type: ignore[arg-type]
    assert notes.sent == ["starting: not_ready"]
