"""The Pacemaker baseline on the real rig: it installs, moves the target under load without losing a write, and
hands the rig back to hacontrol. The timings themselves come from `python -m tests.chaos.pacemaker` (a bench,
not a test); this keeps that bench working."""

from __future__ import annotations

import pytest

from tests.chaos.pacemaker import PROFILES, PacemakerCluster, run_trial
from tests.chaos.rigchaos import Cluster

# In the full rig run (HACONTROL_RIG_FULL=1): it checks the Pacemaker bench, not the product.
pytestmark = [pytest.mark.rig, pytest.mark.rig_full]


def test_the_baseline_moves_the_target_and_gives_the_rig_back(rig, tmp_path):
    pc = PacemakerCluster(rig, PROFILES["default"])
    try:
        active = pc.install()
        result = run_trial(pc, 1, 0, ["planned-switchover"], tmp_path)
        assert result["fault"] == "planned-switchover"
        assert result["active_before"] == active
        assert result["active_after"] == pc.peer(active), result
        assert result["writes_acknowledged"] > 0 and result["writes_lost"] == 0, result
        assert result["phases"]["first_io"] is not None, result
        assert not result["violations"], result
    finally:
        back = pc.uninstall()
    assert back in rig.controllers
    for node in rig.controllers:
        assert rig.ssh(node, "systemctl is-active corosync pacemaker", timeout=30).stdout.split() == [
            "inactive", "inactive"]
    assert Cluster(rig).healthy() in rig.controllers
