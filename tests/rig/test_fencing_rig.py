"""Fencing on real LIO and a real PR-capable shelf (issue #7's "done when", in the rig).

1. SIGSTOP the active agent past the session timeout (no hardware watchdog, no power fencing, so only the
   reservations stand between the frozen controller and the disks): the peer fences and takes over; while the
   old agent is still frozen its controller's writes to the shelf get RESERVATION CONFLICT; on SIGCONT it steps
   down by itself; the probe's verification finds nothing lost and no stale write.
2. Power fencing through the VM's power switch (QMP) is confirmed: the killed controller's VM is off.
3. A fence that cannot succeed blocks promotion: with its shelf path cut, the standby does not promote when the
   active dies, and does as soon as the path is back.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.rig


@pytest.fixture(scope="module", autouse=True)
def _clean_afterwards(rig):
    yield
    from rigctl import agents

    agents.reset(rig)  # later tests drive LIO and the shelf themselves


def _write_check(rig, node: str) -> dict:
    disks = " ".join(d["by_id"] for d in rig.jbod[node])
    out = rig.ssh(node, f"/opt/hacontrol/venv/bin/python -m hacontrol.adapters.fencing.prtool write-check {disks}",
                  timeout=60)
    return json.loads(out.stdout)


def _deploy(rig, **kwargs):
    from rigctl import agents

    from tests.chaos.rigchaos import Cluster

    agents.reset(rig)  # also powers a controller back on that an earlier test left off
    agents.deploy(rig, agents.config_text(rig, **kwargs))
    agents.start(rig)
    cluster = Cluster(rig)
    return cluster, cluster.restore()


def test_frozen_active_is_fenced_by_reservations_and_steps_down_on_resume(rig, tmp_path):
    from tests.chaos.rigchaos import Probe

    cluster, active = _deploy(rig, power_fencing=False, watchdog=False, port_takeover=False)
    standby = cluster.peer(active)
    epoch = cluster.epoch()
    probe = Probe(rig, tmp_path, "freeze").start()
    time.sleep(3)
    pid = rig.ssh(active, "systemctl show -p MainPID --value hacontrol.service", check=True).stdout.strip()
    rig.ssh(active, f"kill -STOP {pid}", check=True)
    try:
        deadline = time.monotonic() + 8 * cluster.session_timeout_s + 30
        while time.monotonic() < deadline and cluster.active() != standby:
            time.sleep(0.5)
        assert cluster.active() == standby and cluster.epoch() == epoch + 1
        checks = _write_check(rig, active)  # the frozen controller's kernel still tries: the disks refuse
        assert checks and all("RESERVATION CONFLICT" in str(v) for v in checks.values()), checks
    finally:
        rig.ssh(active, f"kill -CONT {pid}", timeout=30)
    deadline = time.monotonic() + 60
    role = None
    while time.monotonic() < deadline:
        nodes = {n["node"]: n for n in cluster.status().get("nodes", [])}
        role = nodes.get(active, {}).get("role")
        if role == "standby":
            break
        time.sleep(1)
    assert role == "standby"
    report = probe.stop()
    assert report["writes_lost"] == 0 and report["verification_complete"], report


@pytest.mark.rig_full  # the chaos subset's kill-agent trial powers the killed controller off in every CI run
def test_power_fencing_through_the_vm_power_switch_is_confirmed(rig):
    cluster, active = _deploy(rig, power_fencing=True, watchdog=False)
    standby = cluster.peer(active)
    rig.kill_agent(active)
    deadline = time.monotonic() + 8 * cluster.session_timeout_s + 60
    while time.monotonic() < deadline and cluster.active() != standby:
        time.sleep(0.5)
    assert cluster.active() == standby
    assert rig.vm_state(active) == "off"
    history = cluster.history()
    assert any("qmp" in str(r.get("fence", "")) and "ok" in str(r.get("fence", "")) for r in history), history[-3:]
    cluster.restore()


@pytest.mark.rig_full
def test_a_fence_that_cannot_succeed_blocks_promotion(rig):
    cluster, active = _deploy(rig, power_fencing=False, watchdog=False)
    standby = cluster.peer(active)
    rig.fail_disk_path(standby)
    time.sleep(2)
    rig.power_off(active)
    time.sleep(6 * cluster.session_timeout_s)
    nodes = {n["node"]: n for n in cluster.status().get("nodes", [])}
    assert nodes[standby]["role"] != "active", nodes[standby]
    assert nodes[standby]["alua"] != "active/optimized"
    rig.heal()
    deadline = time.monotonic() + 8 * cluster.session_timeout_s + 60
    while time.monotonic() < deadline and cluster.active() != standby:
        time.sleep(0.5)
    assert cluster.active() == standby
    cluster.restore()
