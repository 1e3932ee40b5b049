"""Operations against real agent processes: sd_notify READY/WATCHDOG, and the metrics endpoint."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from tests.integration.agentkit import NODES, AgentPair

pytestmark = [pytest.mark.zookeeper, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port: int, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name)}


def test_agent_sends_ready_then_watchdog_keepalives(zk_ensemble, zk_chroot, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    pair = AgentPair(zk_ensemble, zk_chroot, tmp_path / "pair")
    try:
        pair.start(NODES[0], env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        messages = [sock.recv(4096).decode() for _ in range(8)]
        # READY only once the agent has decided its role; before it only STATUS lines, no watchdog kick
        ready = next((i for i, m in enumerate(messages) if m.startswith("READY=1")), None)
        assert ready is not None, messages
        assert messages[0] == "STATUS=starting: connecting to ZooKeeper"
        assert all(m.startswith("STATUS=starting") for m in messages[:ready]), messages
        assert "STATUS=starting" not in messages[ready], messages
        assert all(m.startswith("WATCHDOG=1") for m in messages[ready + 1:]), messages
        pair.stop()
        tail = []
        sock.settimeout(2)
        for _ in range(200):
            try:
                tail.append(sock.recv(4096).decode())
            except TimeoutError:
                break
        stopping = [m for m in tail if m.startswith("STOPPING=1")]
        assert stopping, tail
        # systemd's watchdog is stretched over the hand-over, beyond the 2 s WatchdogSec
        fields = dict(line.split("=", 1) for line in stopping[0].splitlines())
        assert int(fields["WATCHDOG_USEC"]) > 2_000_000, stopping
    finally:
        pair.stop()
        sock.close()


def test_metrics_show_role_epoch_and_failover_phases(zk_ensemble, zk_chroot, tmp_path):
    ports = {n: free_port() for n in NODES}
    pair = AgentPair(zk_ensemble, zk_chroot, tmp_path / "pair", fencing=("scsi_pr", "command"))
    try:
        for n in NODES:
            pair.start(n, "--metrics-listen", f"127.0.0.1:{ports[n]}")
        active = pair.active_steady()
        survivor = next(n for n in NODES if n != active)
        assert metric(ports[active], "hacontrol_leader") == {"hacontrol_leader": 1.0}
        assert metric(ports[active], "hacontrol_role")['hacontrol_role{role="active"}'] == 1.0
        pair.kill(active)
        pair.wait_for(lambda: pair.active_steady() == survivor, 20, "the survivor to be active")
        deadline = time.monotonic() + 10
        phases: dict[str, float] = {}
        while time.monotonic() < deadline and not phases:
            phases = {k: v for k, v in metric(ports[survivor], "hacontrol_failover_phase_seconds_count").items()
                      if 'kind="failover"' in k}
            time.sleep(0.2)
        assert any('phase="active"' in k and v >= 1 for k, v in phases.items()), phases
        assert any('phase="fenced"' in k for k in phases)
        assert metric(ports[survivor], "hacontrol_epoch")["hacontrol_epoch"] >= 2
    finally:
        pair.stop()


TARGET = """
[[target]]
iqn = "iqn.2026-11.org.example:itest"
  [target.auth]
  userid = "itest"
  secret = "Itest-Chap-0001"
  [[target.lun]]
  id = 1
  name = "lun1"
  device = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"
  serial = "0123456789abcdef0123456789abcdef"
"""


def test_config_apply_distributes_to_both_agents_and_refuses_invalid_files(zk_ensemble, zk_chroot, tmp_path):
    import json

    pair = AgentPair(zk_ensemble, zk_chroot, tmp_path / "pair")
    try:
        pair.start_all()
        pair.active_steady()
        new = tmp_path / "new.toml"
        new.write_text(pair.config.read_text() + TARGET)
        diff = pair.hactl("config", "diff", str(new))
        assert diff.returncode == 0 and "+iqn = " in diff.stdout and "Itest-Chap-0001" not in diff.stdout
        applied = pair.hactl("config", "apply", str(new), "--yes", "--json")
        assert applied.returncode == 0, applied.stderr
        doc = json.loads(applied.stdout)
        assert doc["applied"] and all(n["sha256_ok"] for n in doc["nodes"].values())
        assert not any(n["restart_pending"] for n in doc["nodes"].values())  # only the target part changed
        assert "[[target]]" in pair.config.read_text()  # the agents wrote it over their file
        status = pair.status()
        assert {n["config"]["sha256"] for n in status["nodes"]} == {doc["sha256"][:12]}
        assert any(c["call"] == "update_config" for c in pair.calls(NODES[0]))
        again = pair.hactl("config", "apply", str(new), "--yes")
        assert again.returncode == 0 and "no change" in again.stdout
        bad = tmp_path / "bad.toml"
        bad.write_text(new.read_text().replace("demote_deadline_s = 1.0", "demote_deadline_s = 5.0"))
        refused = pair.hactl("config", "apply", str(bad), "--yes")
        assert refused.returncode == 2 and "nothing was applied" in refused.stderr
        assert pair.hactl("config", "diff", str(new)).stdout.strip() == "no change"
        slower = tmp_path / "slower.toml"
        slower.write_text(new.read_text().replace("fence_retry_s = 0.5", "fence_retry_s = 0.7"))
        applied_slower = pair.hactl("config", "apply", str(slower), "--yes", "--json")
        assert applied_slower.returncode == 0, applied_slower.stderr
        restart = json.loads(applied_slower.stdout)
        assert all(n["restart_pending"] for n in restart["nodes"].values())
    finally:
        pair.stop()
