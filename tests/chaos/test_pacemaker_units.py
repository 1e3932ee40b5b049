"""The Pacemaker baseline's pure parts, without VMs: corosync.conf, the CIB, the cluster view, phases, ratios."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import pytest
from rigctl import agents
from rigctl.config import load_topology

from tests.chaos.pacemaker import (
    PROFILES,
    SG_PERSIST_SHIM,
    PacemakerCluster,
    corosync_conf,
    phases_from_journal,
    resources_xml,
)
from tests.chaos.report import baseline_markdown

TOPOLOGY = load_topology()
DISKS = ["/dev/disk/by-id/wwn-0x6000a", "/dev/disk/by-id/wwn-0x6000b"]


@dataclass
class FakeRig:
    """What resources_xml and corosync_conf read from the rig: topology, controllers, shelf disks, `ip link`."""

    topology: Any = TOPOLOGY
    commands: list[str] = field(default_factory=list)
    crm_mon: dict[str, str] = field(default_factory=dict)  # node -> what `crm_mon --output-as=xml` prints there

    @property
    def controllers(self) -> list[str]:
        return [n.name for n in TOPOLOGY.controllers]

    @property
    def jbod(self) -> dict[str, list[dict]]:
        return {"ctrl-a": [{"by_id": d} for d in DISKS]}

    def ssh(self, node: str, cmd: str, **_: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(cmd)
        if cmd.startswith("crm_mon"):
            out = self.crm_mon.get(node)
            return subprocess.CompletedProcess(cmd, 0 if out else 102, out or "", "")
        mac = TOPOLOGY.nodes[node].mac(TOPOLOGY.networks["san"])
        return subprocess.CompletedProcess(cmd, 0, f"3: enp0s4: <BROADCAST> mtu 1500 link/ether {mac} brd ff\n", "")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_corosync_conf_has_both_links_two_node_and_one_key_per_line(profile: str) -> None:
    text = corosync_conf(FakeRig(), PROFILES[profile])
    for node in ("ctrl-a", "ctrl-b"):
        n = TOPOLOGY.nodes[node]
        assert f"ring0_addr: {n.address(TOPOLOGY.networks['ic'])}" in text
        assert f"ring1_addr: {n.address(TOPOLOGY.networks['mgmt'])}" in text
    assert "two_node: 1" in text and "transport: knet" in text
    assert all(line.count(":") <= 1 for line in text.splitlines())  # corosync wants one key per line
    assert text.count("{") == text.count("}")
    token = [line.strip() for line in text.splitlines() if line.strip().startswith("token:")]
    assert token == ([] if profile == "default" else ["token: 1000"])  # default: corosync's own (3 s)


def test_resources_put_the_vip_last_and_fence_through_the_shim() -> None:
    root = ET.fromstring(resources_xml(FakeRig(), PROFILES["tuned"]))
    group = root.find("group")
    assert group is not None
    assert [p.get("id") for p in group.findall("primitive")] == ["target", "lun0", "vip"]
    params = {nv.get("name"): nv.get("value") for nv in root.iter("nvpair")}
    assert params["devices"] == ",".join(DISKS)
    assert params["sg_persist_path"] == SG_PERSIST_SHIM
    assert params["provides"] == "unfencing"
    assert params["path"] == DISKS[0] and params["iqn"] == agents.IQN and params["nic"] == "enp0s4"
    assert params["portals"] == f"{params['ip']}:3260"
    intervals = {op.get("interval") for op in group.iter("op") if op.get("name") == "monitor"}
    assert intervals == {"1s"}
    ids = [e.get("id") for e in root.iter() if e.get("id")]
    assert len(ids) == len(set(ids))  # the CIB refuses duplicate ids


def _trial(stack: str, fault: str, first: float, pause: float, *, errors: int = 0, profile: str = "") -> dict:
    t = {"fault": fault, "phases": {"first_io": first}, "io_pause_s": pause, "io_errors": errors, "writes_lost": 0}
    if stack == "pacemaker":
        t.update(stack=stack, profile=profile)
    return t


def test_the_ratio_table_divides_the_medians() -> None:
    ours = [_trial("hacontrol", "power-off", f, f) for f in (4.0, 4.0, 5.0)]
    ours += [_trial("hacontrol", "freeze-vm", 4.0, 4.0)]  # no baseline for it: no row
    theirs = [_trial("pacemaker", "power-off", f, f, errors=1, profile="default") for f in (16.0, 20.0)]
    theirs += [_trial("pacemaker", "power-off", 8.0, 8.0, profile="tuned")]
    text = baseline_markdown(ours, theirs)
    assert "| power-off | hacontrol | 3 | 4.00 / 4.98 |" in text
    assert "| power-off | pacemaker/default | 2 | 18.00 / 19.96 | 18.00 / 19.96 | 2 | 0 | 0.22 | 0.22 |" in text
    assert "| power-off | pacemaker/tuned | 1 | 8.00 / 8.00 | 8.00 / 8.00 | 0 | 0 | 0.50 | 0.50 |" in text
    assert "freeze-vm" not in text


JOURNAL = """\
1000.100000 ctrl-b pacemaker-controld[561]:  notice: Node ctrl-a state is now lost
1000.200000 ctrl-b pacemaker-fenced[557]:  notice: Node ctrl-a state is now lost
1005.500000 ctrl-b pacemaker-fenced[557]:  notice: Operation 'on' targeting ctrl-b by ctrl-b for x: OK (Done)
1012.600000 ctrl-b pacemaker-fenced[557]:  notice: Operation 'reboot' targeting ctrl-a by ctrl-b for x: OK (Done)
1032.100000 ctrl-b pacemaker-controld[561]:  notice: Result of start operation for lun0 on ctrl-b: OK
1035.400000 ctrl-b pacemaker-controld[561]:  notice: Result of start operation for vip on ctrl-b: OK
"""


def test_phases_come_from_the_new_actives_journal_on_the_hosts_clock() -> None:
    # The guest's clock runs 10 s ahead of the host's; the fault happened at host time 983.0.
    got = phases_from_journal(JOURNAL, "ctrl-a", "ctrl-b", 10.0, 983.0)
    assert got == {"detect": 7.1, "fenced": 19.6, "alua": 39.1, "vips": 42.4}
    planned = phases_from_journal(JOURNAL, "ctrl-a", "ctrl-b", 10.0, 1030.0)  # after the loss: none of it counts
    assert planned == {"detect": None, "fenced": None, "alua": None, "vips": None}


def _crm_mon(quorum: bool, online: list[str], started_on: dict[str, str], failure: bool = False) -> str:
    nodes = "".join(f'<node name="{n}" online="{str(n in online).lower()}"/>' for n in ("ctrl-a", "ctrl-b"))
    res = "".join(f'<resource id="{r}" role="Started" active="true"><node name="{n}"/></resource>'
                  for r, n in started_on.items())
    fail = '<failures><failure op_key="lun0_monitor_0"/></failures>' if failure else ""
    return (f'<pacemaker-result><summary><current_dc present="true" with_quorum="{str(quorum).lower()}"/>'
            f"</summary><nodes>{nodes}</nodes><resources><group id=\"iscsi\">{res}</group></resources>{fail}"
            "</pacemaker-result>")


def test_the_cluster_is_read_from_a_quorate_node_and_the_group_runs_where_all_three_run() -> None:
    everything_on_b = {"target": "ctrl-b", "lun0": "ctrl-b", "vip": "ctrl-b"}
    # ctrl-a's corosync was killed: its own stale view still shows itself online and serving.
    rig = FakeRig(crm_mon={"ctrl-a": _crm_mon(False, ["ctrl-a"], {"target": "ctrl-a", "lun0": "ctrl-a",
                                                                   "vip": "ctrl-a"}),
                           "ctrl-b": _crm_mon(True, ["ctrl-b"], everything_on_b)})
    pc = PacemakerCluster(rig, PROFILES["default"])
    assert pc.state() == {"online": ["ctrl-b"], "group_on": ["ctrl-b"], "failed": False}
    assert pc.answered == "ctrl-b" and pc.healthy() is None  # one node out: not healthy
    rig.crm_mon["ctrl-b"] = _crm_mon(True, ["ctrl-a", "ctrl-b"], {**everything_on_b, "vip": "ctrl-a"})
    assert pc.active() is None  # a group split over two nodes does not run anywhere
    rig.crm_mon["ctrl-b"] = _crm_mon(True, ["ctrl-a", "ctrl-b"], everything_on_b)
    assert pc.healthy() == "ctrl-b"
    rig.crm_mon["ctrl-b"] = _crm_mon(True, ["ctrl-a", "ctrl-b"], everything_on_b, failure=True)
    assert pc.healthy() is None  # failed actions still to clear
