"""The CI subset of the chaos campaign: a fixed seed, the faults marked ci=True in the catalog, one trial each.

Every trial must show no invariant violation: no two writers, no PDL-class sense, no acknowledged write lost,
no application error where none is allowed, I/O resumed within the fault's budget, no flapping. The trials are
also written to .rig/chaos-ci/trials.jsonl with a report next to it, like the on-demand campaign, and copied
into the run's log folder (.rig/logs/<run>/chaos-ci/), which outlives `vagrant/rig down`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.chaos.campaign import run_trial, write_report
from tests.chaos.faults import CATALOG
from tests.chaos.rigchaos import Cluster

pytestmark = pytest.mark.rig
SEED = 20261123
OUT = Path(__file__).resolve().parents[2] / ".rig" / "chaos-ci"
CI_FAULTS = sorted(name for name, f in CATALOG.items() if f.ci)
# Only in the full rig run: with the peer link on, the kill-agent trial already ends in a power-off of the old
# active, and each power-off costs a guest boot (minutes under TCG) before the next trial can start.
FULL_ONLY = {"power-off"}


@pytest.fixture(scope="module")
def cluster(rig):
    from rigctl import agents

    agents.deploy(rig, agents.config_text(rig))
    agents.start(rig)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "trials.jsonl").unlink(missing_ok=True)
    yield Cluster(rig)
    agents.reset(rig)
    write_report(OUT)
    if rig.state is not None:  # `vagrant/rig down` clears .rig/ but keeps the run's log folder: keep a copy there
        shutil.copytree(OUT, Path(rig.state.log_dir) / "chaos-ci", dirs_exist_ok=True)


@pytest.mark.parametrize("fault", [pytest.param(f, marks=pytest.mark.rig_full) if f in FULL_ONLY else f
                                   for f in CI_FAULTS])
def test_fault_leaves_the_initiator_unharmed(cluster, fault):
    import json

    result = run_trial(cluster, SEED, CI_FAULTS.index(fault), [fault], OUT / "probes")
    with open(OUT / "trials.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    assert result["fault"] == fault
    assert not result["violations"], result
