"""The peer link on real controllers (LIO, the shelf's reservations, QMP power, kernel networking in the guests).

1. A killed active agent (its kernel target still serving) is powered off and taken over on the link's word,
   before its ZooKeeper session could expire: the history says so, and the VM is off.
2. The active cut from ZooKeeper keeps serving on the standby's promise: no takeover, no I/O error at the
   initiator; the standby reports that it promised; after the heal the same controller leads a new epoch.

Times are printed, not asserted (tests/bench and the chaos campaign measure them).
"""

from __future__ import annotations

import time

import pytest

# In the full rig run (HACONTROL_RIG_FULL=1): the chaos subset's kill-agent and partition-zk trials go
# through the same two paths in every CI run.
pytestmark = [pytest.mark.rig, pytest.mark.rig_full]


@pytest.fixture(scope="module")
def cluster(rig):
    from rigctl import agents

    from tests.chaos.rigchaos import Cluster

    agents.reset(rig)
    agents.deploy(rig, agents.config_text(rig, peer_link=True))
    agents.start(rig)
    yield Cluster(rig)
    agents.reset(rig)


def _wait(what: str, predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


def test_a_killed_active_is_powered_off_and_taken_over_on_the_links_word(rig, cluster):
    active = cluster.restore()
    standby = cluster.peer(active)
    epoch = cluster.epoch()
    t0 = time.monotonic()
    rig.kill_agent(active)
    _wait(f"{standby} active", lambda: cluster.active() == standby, rig.scaled(60))
    print(f"kill -9 of {active}'s agent: {standby} active after {time.monotonic() - t0:.2f} s (hactl polling)")
    record = next(r for r in reversed(cluster.history()) if r.get("kind") == "failover" and r.get("to") == standby)
    assert record["detected_by"] == "peer_link", record
    assert record["epoch"] == epoch + 1
    assert "qmp" in record["fence"] and "off" in record["fence"], record["fence"]
    assert rig.vm_state(active) == "off"
    print(f"phases (s from detection): {record['phases']}")
    cluster.restore()


def test_the_active_cut_from_zookeeper_keeps_serving_on_the_standbys_promise(rig, cluster, tmp_path):
    from tests.chaos.rigchaos import Probe

    active = cluster.restore()
    standby = cluster.peer(active)
    epoch = cluster.epoch()
    probe = Probe(rig, tmp_path, "failsafe").start()
    time.sleep(3)
    rig.partition(active, "zk")
    try:
        def promised():
            nodes = {n["node"]: n for n in cluster.status().get("nodes", [])}
            return nodes.get(standby, {}).get("reason") == "promised"
        _wait(f"{standby} to report its promise", promised, rig.scaled(40))
        time.sleep(2 * cluster.session_timeout_s)
        assert cluster.active() != standby
    finally:
        rig.heal()
    _wait(f"{active} to lead again", lambda: cluster.status().get("leader", {}) and
          cluster.status()["leader"]["node"] == active and cluster.epoch() == epoch + 1, rig.scaled(60))
    report = probe.stop()
    print(f"initiator through the outage: longest pause {report['io_pause_s']:.2f} s, errors {report['io_errors']}")
    assert report["io_errors"] == 0 and report["writes_lost"] == 0 and report["verification_complete"], report
