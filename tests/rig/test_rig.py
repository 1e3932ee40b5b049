"""The VM rig does what it says: smoke is all true, and partition / freeze-vm / power-off demonstrably act.

Runs against one rig per session (conftest.py). Every test undoes its fault in `finally`, so a failing test
does not poison the next one. Order matters only for speed: power-off (a reboot) comes last.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
from rigctl import Rig, RigError

pytestmark = [pytest.mark.rig, pytest.mark.slow]

UP_GOAL_S = 300  # the goal for `up` on this machine


def zk_reachable(rig: Rig, node: str) -> dict[str, bool]:
    """Per ZooKeeper member: can `node` open a TCP connection to its client port?"""
    port = 2181
    script = "; ".join(f"nc -z -w2 {m} {port} 2>/dev/null && echo '{m} up' || echo '{m} down'"
                       for m in rig.zk_connect.replace(f":{port}", "").split(","))
    out = rig.ssh(node, script, timeout=30, check=True).stdout
    return {line.split()[0]: line.split()[1] == "up" for line in out.splitlines()}


def pings(rig: Rig, node: str, address: str) -> bool:
    return rig.ssh(node, f"ping -c1 -W1 {address} >/dev/null", timeout=20).returncode == 0


def pings_from_host(rig: Rig, address: str) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", rig.namespace, "ping", "-c1", "-W1", address],
                          capture_output=True, timeout=20, check=False)
    return proc.returncode == 0


_TCP_PROBE = """
import socket, sys, time, json
host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
t0 = time.monotonic(); samples = []
while time.monotonic() - t0 < duration:
    start = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=0.3).close(); ok = True
    except OSError:
        ok = False
    samples.append([round(start - t0, 2), ok])
    time.sleep(max(0.0, 0.25 - (time.monotonic() - start)))
print(json.dumps(samples))
"""


def tcp_probe(rig: Rig, address: str, port: int, duration_s: float) -> subprocess.Popen:
    """Start polling TCP connects from the rig namespace; .communicate() yields [[t, ok], ...] as JSON."""
    return subprocess.Popen(["ip", "netns", "exec", rig.namespace, "python3", "-c", _TCP_PROBE, address,
                             str(port), str(duration_s)], stdout=subprocess.PIPE, text=True)


def test_smoke_reports_every_part_true(rig: Rig) -> None:
    from rigctl import agents

    agents.reset(rig)  # the smoke builds its own LIO targets: no agent may hold relative port ids or disks
    result = rig.smoke()
    assert result["checks"], result
    failed = {name: result["details"][name] for name, ok in result["checks"].items() if not ok}
    assert not failed, json.dumps(failed, indent=1)
    for name in ("lio_loaded", "distinct_rtpi", "jbod_same_wwn", "scsi_pr_both_controllers", "zookeeper_quorum",
                 "initiator_host_reaches_controllers"):
        assert result["checks"][name] is True
    assert result["up_seconds"] is not None
    assert result["up_seconds"] <= UP_GOAL_S * 1.5, f"up took {result['up_seconds']} s (goal {UP_GOAL_S} s)"


def test_api_exposes_what_later_tests_need(rig: Rig) -> None:
    assert set(rig.controllers) == {"ctrl-a", "ctrl-b"}
    assert rig.addresses["ctrl-a"]["san"] != rig.addresses["ctrl-b"]["san"]
    assert rig.zk_connect.count(":2181") == 3
    assert rig.log_dir is not None and rig.log_dir.is_dir()
    assert subprocess.run(["ip", "netns", "exec", rig.namespace, "true"], check=False).returncode == 0
    wwns = rig.jbod_wwns
    assert wwns and all(w.startswith("naa.") for w in wwns.values())
    for node in rig.controllers:
        paths = rig.jbod_paths(node)
        assert set(paths) == set(wwns)
        assert all(p.startswith("/dev/disk/by-id/wwn-") for p in paths.values())
        assert rig.ssh(node, f"test -b {paths['disk0']}", timeout=30).returncode == 0


def test_partition_from_zk_cuts_only_zookeeper_then_heal_restores(rig: Rig) -> None:
    assert all(zk_reachable(rig, "ctrl-a").values())
    try:
        rig.partition("ctrl-a", "zk")
        assert not any(zk_reachable(rig, "ctrl-a").values()), "ctrl-a still reaches a ZooKeeper member"
        assert all(zk_reachable(rig, "ctrl-b").values()), "the peer lost ZooKeeper too"
        assert pings(rig, "ctrl-a", rig.address("ctrl-b", "ic")), "the interconnect was cut as well"
    finally:
        rig.heal()
    assert all(zk_reachable(rig, "ctrl-a").values())


def test_partition_from_peer_cuts_every_network_between_the_controllers(rig: Rig) -> None:
    try:
        rig.partition("ctrl-a", "peer")
        for net in ("ic", "san", "mgmt"):
            assert not pings(rig, "ctrl-a", rig.address("ctrl-b", net)), f"peer still answers on {net}"
        assert all(zk_reachable(rig, "ctrl-a").values())
        assert pings_from_host(rig, rig.address("ctrl-a", "san"))
    finally:
        rig.heal()
    assert pings(rig, "ctrl-a", rig.address("ctrl-b", "ic"))


def test_partition_from_initiators_cuts_the_san_side_only(rig: Rig) -> None:
    try:
        rig.partition("ctrl-b", "initiators")
        assert not pings_from_host(rig, rig.address("ctrl-b", "san"))
        assert pings_from_host(rig, rig.address("ctrl-a", "san"))
        if rig.has_initiator_vm:
            assert not pings(rig, "init", rig.address("ctrl-b", "san"))
            assert pings(rig, "init", rig.address("ctrl-a", "san"))
        assert pings(rig, "ctrl-b", rig.address("ctrl-a", "san")), "the peer is not an initiator"
    finally:
        rig.heal()
    assert pings_from_host(rig, rig.address("ctrl-b", "san"))


def test_fail_disk_path_cuts_the_shelf_and_heal_brings_the_session_back(rig: Rig) -> None:
    shelf = rig.host_addresses["jbod"]
    try:
        rig.fail_disk_path("ctrl-a")
        assert not pings(rig, "ctrl-a", shelf)
        assert pings(rig, "ctrl-b", shelf)
    finally:
        rig.heal()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = rig.ssh("ctrl-a", "iscsiadm -m session -P 1 | grep 'iSCSI Session State'", timeout=20).stdout
        if "LOGGED_IN" in out:
            break
        time.sleep(1)
    assert "LOGGED_IN" in out
    disk0 = rig.jbod_paths("ctrl-a")["disk0"]
    assert rig.ssh("ctrl-a", f"dd if={disk0} of=/dev/null bs=4k count=1 iflag=direct", timeout=60).returncode == 0


def test_freeze_vm_stops_the_vm_for_the_given_seconds_then_resumes(rig: Rig) -> None:
    node, seconds = "ctrl-b", 4.0
    probe = tcp_probe(rig, rig.address(node), 22, duration_s=seconds + 4)
    time.sleep(1.0)
    states: list[str] = []
    freezer = threading.Thread(target=lambda: states.append(rig.freeze_vm(node, seconds)["state"]))
    t_freeze = time.monotonic()
    freezer.start()
    time.sleep(1.0)
    paused_state = rig.vm_state(node)
    freezer.join(timeout=seconds + 30)
    samples = json.loads(probe.communicate(timeout=60)[0])
    assert paused_state == "paused"
    assert states == ["running"]
    # The probe started ~1 s before the freeze: answers before, none for (almost) the whole freeze, answers after.
    offset = 1.0
    during = [ok for t, ok in samples if offset + 0.7 < t < offset + seconds - 0.5]
    after = [ok for t, ok in samples if t > offset + seconds + 1.5]
    assert during and not any(during), f"the VM answered while frozen: {samples}"
    assert after and any(after), f"the VM did not answer after resuming: {samples}"
    assert time.monotonic() - t_freeze >= seconds
    assert rig.ssh(node, "true", timeout=30).returncode == 0


def test_agent_faults_report_clearly_when_the_agent_is_not_running(rig: Rig) -> None:
    if rig.ssh("ctrl-a", "systemctl is-active hacontrol.service", timeout=30).stdout.strip() == "active":
        pytest.skip("hacontrol.service runs on ctrl-a; this test is about the rig without an agent")
    with pytest.raises(RigError, match="not running"):
        rig.kill_agent("ctrl-a")
    with pytest.raises(RigError, match="not running"):
        rig.freeze_agent("ctrl-a", 1)


@pytest.mark.rig_full  # the power switch is exercised by every kill-agent chaos trial
def test_power_off_is_confirmed_by_the_hypervisor_and_power_on_restores(rig: Rig) -> None:
    node = "ctrl-b"
    try:
        assert rig.power_off(node) == "off"
        assert rig.vm_state(node) == "off"
        launcher = rig.launcher
        if rig.state.launcher == "qemu":  # the qemu process is gone: its QMP socket no longer answers
            with pytest.raises(RigError):
                launcher.qmp(rig.topology.node(node)).status()
        else:  # libvirt's own view of the domain
            assert launcher.libvirt.domain_state(rig.topology.node(node).domain) == "off"
        assert not pings_from_host(rig, rig.address(node))
    finally:
        if rig.vm_state(node) == "off":
            rig.power_on(node, wait=True)
    assert rig.vm_state(node) == "running"
    disk0 = rig.jbod_paths(node)["disk0"]
    assert rig.ssh(node, f"test -b {disk0}", timeout=30).returncode == 0
