"""rigctl's pure parts, without VMs: layout, kernel command line, fault rules, image key, configs."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from rigctl import RigError, driver, faults, image, zookeeper
from rigctl.config import Paths, load_topology
from rigctl.libvirt import PrivateLibvirt

TOPOLOGY = load_topology()


def test_layout_has_unique_macs_addresses_and_short_tap_names() -> None:
    macs, addresses = [], []
    for node in TOPOLOGY.nodes.values():
        for net_name in node.networks:
            net = TOPOLOGY.networks[net_name]
            macs.append(node.mac(net))
            addresses.append(node.address(net))
            assert len(node.tap(net)) <= 15  # IFNAMSIZ
            assert node.address(net) != net.host
    assert len(set(macs)) == len(macs)
    assert len(set(addresses)) == len(addresses)
    assert len(TOPOLOGY.controllers) == 2
    mgmt = TOPOLOGY.networks[TOPOLOGY.zookeeper.network]
    assert all(ipaddress.ip_address(m) in mgmt.cidr for m in TOPOLOGY.zookeeper.members)


def test_kernel_args_carry_identity_and_one_nic_per_network() -> None:
    node = TOPOLOGY.node("ctrl-a")
    args = TOPOLOGY.kernel_args(node).split()
    assert "hacrig.name=ctrl-a" in args
    assert f"hacrig.iqn={TOPOLOGY.iqn_prefix}:ctrl-a" in args
    nics = [a.removeprefix("hacrig.nic=") for a in args if a.startswith("hacrig.nic=")]
    assert len(nics) == len(node.networks)
    dhcp = [n for n in nics if n.endswith(",dhcp")]
    assert len(dhcp) == 1 and dhcp[0].startswith(node.mac(TOPOLOGY.networks["mgmt"]))


def test_peer_of_is_the_other_controller() -> None:
    assert TOPOLOGY.peer_of("ctrl-a").name == "ctrl-b"
    with pytest.raises(RigError):
        TOPOLOGY.peer_of("init")
    with pytest.raises(RigError):
        TOPOLOGY.node("ctrl-c")


def _taps(node) -> dict[str, str]:
    return {net: node.tap(TOPOLOGY.networks[net]) for net in node.networks}


def test_partition_rules_name_the_right_taps() -> None:
    zk = faults.rules_for(faults.Fault("partition", "ctrl-a", "zk"), TOPOLOGY, _taps)
    assert {chain for chain, _ in zk} == {"input", "output"}
    assert all('"hr-ctrl-a-mgmt"' in rule and "10.50.0.21" in rule for _, rule in zk)
    peer = faults.rules_for(faults.Fault("partition", "ctrl-a", "peer"), TOPOLOGY, _taps)
    assert all(chain == "forward" and "hr-ctrl-b-ic" in rule for chain, rule in peer)
    initiators = faults.rules_for(faults.Fault("partition", "ctrl-b", "initiators"), TOPOLOGY, _taps)
    assert any("hr-init-san" in rule for _, rule in initiators)
    assert not any("hr-ctrl-a" in rule for _, rule in initiators)
    disk = faults.rules_for(faults.Fault("disk-path", "ctrl-a"), TOPOLOGY, _taps)
    assert all("hr-ctrl-a-jbod" in rule for _, rule in disk)


def test_ruleset_replaces_the_table_in_one_transaction() -> None:
    text = faults.ruleset([faults.Fault("partition", "ctrl-a", "zk"), faults.Fault("disk-path", "ctrl-b")],
                          TOPOLOGY, _taps)
    assert text.startswith("add table bridge hacrig\ndelete table bridge hacrig\n")
    assert 'comment "partition ctrl-a from zk"' in text


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft")
def test_ruleset_is_valid_nft() -> None:
    text = faults.ruleset([faults.Fault("partition", n, t) for n in ("ctrl-a", "ctrl-b")
                           for t in faults.PARTITION_TARGETS], TOPOLOGY, _taps)
    # A throwaway network namespace: nothing is applied anywhere that outlives the command.
    proc = subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], input=text, text=True, capture_output=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_image_key_changes_with_requirements_but_not_otherwise() -> None:
    reqs = image.guest_requirements(Paths.default().repo / "pyproject.toml")
    assert not any(r.lower().startswith("rtslib") for r in reqs), "Debian provides rtslib-fb in the guest"
    assert image.input_hash(reqs) == image.input_hash(list(reqs))
    assert image.input_hash(reqs) != image.input_hash([*reqs, "extra-package"])


def test_debian_mirror_is_read_from_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n")
    assert image.debian_mirror(tmp_path) == "http://mirror.invalid/debian"
    other = tmp_path / "one-line"
    (other / "sources.list.d").mkdir(parents=True)
    (other / "sources.list").write_text("deb [arch=amd64] http://mirror.invalid/deb bookworm main\n")
    assert image.debian_mirror(other) == "http://mirror.invalid/deb"


def test_zookeeper_config_admits_one_to_ten_second_sessions(tmp_path: Path) -> None:
    text = zookeeper.config_text(TOPOLOGY, 2, tmp_path)
    conf = dict(line.split("=", 1) for line in text.splitlines())
    assert int(conf["tickTime"]) <= 500
    assert int(conf["minSessionTimeout"]) <= 1000 and int(conf["maxSessionTimeout"]) >= 10000
    assert conf["clientPortAddress"] == TOPOLOGY.zookeeper.members[1]
    assert sum(key.startswith("server.") for key in conf) == 3


def test_has_quorum_needs_a_leader_and_a_majority() -> None:
    assert zookeeper.has_quorum({"a": "leader", "b": "follower", "c": "down"})
    assert not zookeeper.has_quorum({"a": "leader", "b": "down", "c": "down"})
    assert not zookeeper.has_quorum({"a": "follower", "b": "follower", "c": "follower"})


def test_libvirt_networks_are_isolated_with_fixed_leases_on_mgmt_only(tmp_path: Path) -> None:
    lv = PrivateLibvirt(TOPOLOGY, Paths.default(), tmp_path)
    mgmt = lv.network_xml(TOPOLOGY.networks["mgmt"])
    assert "<forward" not in mgmt and "hr-mgmt" in mgmt
    assert "52:54:00:50:00:0b" in mgmt and "10.50.0.11" in mgmt
    assert "<dhcp>" not in lv.network_xml(TOPOLOGY.networks["san"])


class ScriptedRig(driver.Rig):
    """For Rig.ensure_running (chaos restore, agents.reset): VM states and ssh answers come from a script, one
    entry per look (the last one repeats); records what it did."""

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


def test_a_running_vm_that_answers_is_left_alone(tmp_path: Path) -> None:
    rig = ScriptedRig(tmp_path, ["running"], [True])
    assert rig.ensure_running("ctrl-a") == "reachable" and rig.did == []


def test_a_rebooting_vm_that_its_peer_powers_off_is_powered_on(tmp_path: Path, monkeypatch) -> None:
    # what CI met: reset by its hardware watchdog ("running", no ssh), then power-fenced by its peer ("off")
    monkeypatch.setattr(driver.time, "sleep", lambda s: None)
    rig = ScriptedRig(tmp_path, ["running", "running", "off"], [False, False])
    assert rig.ensure_running("ctrl-a") == "powered on" and rig.did == ["power_on"]


def test_a_paused_vm_is_resumed(tmp_path: Path) -> None:
    rig = ScriptedRig(tmp_path, ["paused", "running"], [True])
    assert rig.ensure_running("ctrl-a") == "resumed" and rig.did == ["resume"]


def test_a_vm_that_never_answers_is_an_error_naming_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(driver.time, "sleep", lambda s: None)
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(driver.time, "monotonic", lambda: float(next(clock)))
    rig = ScriptedRig(tmp_path, ["running"], [False])
    with pytest.raises(RigError, match="ctrl-a did not answer ssh within 60 s"):
        rig.ensure_running("ctrl-a", timeout=60)


class _TimedGuest:
    """A guest whose speed probe prints the next of its scripted times."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def run(self, cmd: str, timeout: float, check: bool) -> subprocess.CompletedProcess[str]:
        assert "import hacontrol.agent.main" in cmd and timeout > 0
        return subprocess.CompletedProcess(cmd, 0, stdout=f"noise\n{self.times.pop(0)}\n", stderr="")


def test_the_speed_factor_is_the_slower_controllers_best_run_over_the_reference(monkeypatch) -> None:
    from rigctl import speed
    from rigctl.proc import NULL_LOG

    monkeypatch.delenv("HACONTROL_RIG_SPEED_FACTOR", raising=False)
    ref = speed.REFERENCE_S
    out = speed.measure({"ctrl-a": _TimedGuest(ref * 3, ref * 1.5), "ctrl-b": _TimedGuest(ref * 2.5, ref * 2)},
                        NULL_LOG)
    assert out["factor"] == 2.0  # ctrl-b's best run (2 x) is slower than ctrl-a's (1.5 x)
    fast = speed.measure({"ctrl-a": _TimedGuest(ref / 2, ref / 2)}, NULL_LOG)
    assert fast["factor"] == 1.0  # a faster host never shortens a limit
    monkeypatch.setenv("HACONTROL_RIG_SPEED_FACTOR", "3")
    assert speed.measure({"ctrl-a": _TimedGuest(ref, ref)}, NULL_LOG)["factor"] == 3.0
    assert speed.scaled(10, 2.5) == 25 and speed.scaled(10, 0.5) == 10


def test_a_cpu_limit_is_refused_unless_it_is_a_sensible_number_of_cpus(monkeypatch) -> None:
    from rigctl import speed

    monkeypatch.delenv("HACONTROL_RIG_CPU_LIMIT", raising=False)
    monkeypatch.delenv("HACONTROL_RIG_VM_CPU", raising=False)  # a slowed CI run sets it for the whole run
    assert speed.cpu_limit() is None
    monkeypatch.setenv("HACONTROL_RIG_CPU_LIMIT", "1.0")
    assert speed.cpu_limit() == 1.0
    for bad in ("half", "0", str((os.cpu_count() or 1) + 1)):
        monkeypatch.setenv("HACONTROL_RIG_CPU_LIMIT", bad)
        with pytest.raises(RigError, match="HACONTROL_RIG_CPU_LIMIT"):
            speed.cpu_limit()
    monkeypatch.delenv("HACONTROL_RIG_CPU_LIMIT")
    monkeypatch.delenv("HACONTROL_RIG_VM_CPU", raising=False)
    assert speed.vm_cpu_limit() is None
    monkeypatch.setenv("HACONTROL_RIG_VM_CPU", "0.5")
    assert speed.vm_cpu_limit() == 0.5 and speed.cpu_limit() is None
    monkeypatch.setenv("HACONTROL_RIG_VM_CPU", "0")
    with pytest.raises(RigError, match="HACONTROL_RIG_VM_CPU='0'"):
        speed.vm_cpu_limit()
    monkeypatch.setenv("HACONTROL_RIG_VM_CPU", "0.5")
    monkeypatch.setenv("HACONTROL_RIG_CPU_LIMIT", "1.0")
    for which in (speed.cpu_limit, speed.vm_cpu_limit):  # one or the other, never both
        with pytest.raises(RigError, match="both given"):
            which()


def test_a_vm_gets_a_cpu_quota_of_its_own_in_the_real_cgroup_tree(monkeypatch) -> None:
    """HACONTROL_RIG_VM_CPU on this host's cgroups (a test-only name, so a running rig is not touched): the
    process lands in a child named after the VM with that quota, and remove_limit removes both levels."""
    from rigctl import speed
    from rigctl.proc import NULL_LOG

    monkeypatch.setattr(speed, "CGROUP_NAME", f"hacontrol-rig-test-{os.getpid()}")
    directory, v2 = speed._cgroup_dir()
    if not directory.parent.exists() or os.geteuid() != 0:
        pytest.skip("needs root and a cpu cgroup hierarchy")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        speed.limit_processes([sleeper.pid], 0.5, NULL_LOG, own="ctrl-a")
        child = directory / "ctrl-a"
        assert str(sleeper.pid) in (child / "cgroup.procs").read_text().split()
        quota = (child / "cpu.max").read_text().split()[0] if v2 else (child / "cpu.cfs_quota_us").read_text().strip()
        assert int(quota) == int(0.5 * speed.PERIOD_US)
    finally:
        sleeper.kill()
        sleeper.wait()
        for _ in range(50):  # the kernel lets go of a dead process's cgroup a moment later
            speed.remove_limit(NULL_LOG)
            if not directory.exists():
                break
            time.sleep(0.1)
    assert not directory.exists()


@pytest.mark.parametrize("factor", [0.8, 1.0, 1.64, 3.91])
def test_the_timing_dials_follow_the_speed_factor_within_the_ensembles_session_limit(factor):
    from rigctl import agents

    from hacontrol.core.timing import Timing

    dials = agents.timing_dials(factor, max_session_ms=10000)
    assert dials["session_timeout_s"] == round(min(max(1.0, factor) * 3.0, 10.0), 2)
    assert dials["peer_dead_after_s"] == round(agents.PEER_DEAD_AFTER_S * max(1.0, factor), 2)
    assert Timing(**{**agents.TIMING, **dials}).validate() == []
