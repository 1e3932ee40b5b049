"""The lab cleans up after itself, even when interrupted, and refuses to run twice at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hacontrol.lab import netns
from hacontrol.lab.lab import PREFIX, TGT_CONTROL_PORTS, Lab
from hacontrol.lab.tgtd import IPC_DIR

pytestmark = [pytest.mark.netns, pytest.mark.tgt, pytest.mark.zookeeper, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def hactl(*args: str, lab_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hacontrol.cli.main", "lab", "--lab-dir", str(lab_dir), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


def lab_processes(lab_dir: Path) -> list[str]:
    """Every process on the machine whose command line mentions this lab's directory or namespaces."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(lab_dir) in cmd or f"{PREFIX}-" in cmd:
            found.append(f"{pid}: {cmd[:120]}")
    return found


def assert_nothing_left(lab_dir: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and lab_processes(lab_dir):
        time.sleep(0.2)
    assert lab_processes(lab_dir) == []
    assert [n for n in netns.list_namespaces() if n.startswith(PREFIX + "-")] == []
    assert not lab_dir.exists()
    for port in TGT_CONTROL_PORTS.values():
        assert not (IPC_DIR / f"socket.{port}").exists()


@pytest.fixture
def lab_dir(tmp_path: Path):
    d = tmp_path / "lab"
    yield d
    Lab(d).down()  # whatever a failed test left


@pytest.mark.parametrize("after_s", [1.5, 6.0, 14.0])
def test_ctrl_c_at_any_point_of_the_demo_leaves_nothing_behind(lab_dir: Path, after_s: float):
    proc = subprocess.Popen([sys.executable, "-m", "hacontrol.cli.main", "lab", "--lab-dir", str(lab_dir), "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert_nothing_left(lab_dir)


def test_down_ends_a_process_the_lab_started_but_never_recorded(lab_dir: Path):
    """Ctrl-C between a fork and the state file leaves a process no PID in the state names; it still runs in
    one of the lab's namespaces, and down ends it there. (The [1.5] case above once left three ZooKeeper
    members behind in CI; this closes one way that can happen, not proven to be that one.)"""
    ns = f"{PREFIX}-zk"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", "import time; time.sleep(120)",
                              "hacontrol-unrecorded"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while child.pid not in netns.pids_in(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in netns.pids_in(ns)
        done = Lab(lab_dir).down()
        assert f"stopped unrecorded process {child.pid} in {ns}" in done
        try:
            child.wait(timeout=10)  # its own sleep is 120 s: only down() can have ended it by now
        except subprocess.TimeoutExpired:
            pytest.fail(f"down() left the unrecorded process {child.pid} running")
        assert_nothing_left(lab_dir)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_up_twice_is_refused_and_down_is_idempotent(lab_dir: Path):
    first = hactl("up", lab_dir=lab_dir)
    assert first.returncode == 0, first.stderr
    second = hactl("up", lab_dir=lab_dir)
    assert second.returncode == 1 and "already up" in second.stderr
    status = hactl("status", lab_dir=lab_dir)
    assert status.returncode == 0 and "ctrl-a" in status.stdout
    assert hactl("down", lab_dir=lab_dir).returncode == 0
    assert hactl("down", lab_dir=lab_dir).returncode == 0
    assert_nothing_left(lab_dir)


def test_a_second_lab_command_is_refused_while_one_runs(lab_dir: Path):
    with Lab(lab_dir).lock():
        busy = hactl("up", lab_dir=lab_dir)
    assert busy.returncode == 1 and "another hactl lab command is running" in busy.stderr


def test_local_step_down_and_metrics_after_a_failover_in_the_lab(lab_dir: Path):
    """systemd's ExecStopPost path (hactl local step-down) on a dead agent, then /metrics on the survivor."""
    from hacontrol.lab.demo import Demo, other

    # Without the peer link: with it the survivor powers the dead controller off within a few hundred ms, before
    # a step-down run after the kill could find anything to do (the session-expiry path leaves it the time).
    lab = Lab(lab_dir, peer_link=False)
    try:
        lab.up()
        demo = Demo(lab, lambda _m: None)
        active = demo.wait("one active controller", demo.active, 60)
        state = lab.state()
        os.kill(state["pids"][f"{active}-agent"], signal.SIGKILL)
        ns = state["netns"][active]
        step = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "hacontrol.cli.main", "local",
                               "step-down", "--config", str(lab.config_file), "--node", active, "--json"],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "HACONTROL_TGT_CONTROL_PORT": str(TGT_CONTROL_PORTS[active])})
        assert step.returncode == 0, step.stdout + step.stderr
        assert "RemoveVips" in step.stdout
        vip = state["vip"].split("/")[0]
        held = subprocess.run(["ip", "-n", ns, "-4", "addr", "show", "dev", "eth0"], capture_output=True,
                              text=True, check=True).stdout
        assert vip not in held
        survivor = other(active)
        demo.wait("the survivor to become active", lambda: demo.active(survivor), 60)
        text = ""
        for _ in range(50):
            text = subprocess.run(["ip", "netns", "exec", state["netns"][survivor], sys.executable, "-c",
                                   "import urllib.request;print(urllib.request.urlopen("
                                   "'http://127.0.0.1:9475/metrics',timeout=5).read().decode())"],
                                  capture_output=True, text=True, timeout=30, check=False).stdout
            if 'hacontrol_failover_phase_seconds_count{kind="failover",phase="active"}' in text:
                break
            time.sleep(0.2)
        assert 'hacontrol_failover_phase_seconds_count{kind="failover",phase="active"} 1.0' in text
        assert 'hacontrol_role{role="active"} 1.0' in text
    finally:
        lab.down()
    assert_nothing_left(lab_dir)
