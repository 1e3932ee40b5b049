"""LioPort (TargetPort + PortMover) on the directory-backed fake LIO: observe, configure, ALUA, port moves,
refusals, capacity events."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hacontrol.adapters.lio import LioPort
from hacontrol.adapters.lio import desired as lio_desired
from hacontrol.adapters.lio.capacity import CapacityReading
from hacontrol.agent.protocols import AdapterError, DuplicateAddress, ManagedAddress
from hacontrol.core.model import AluaState
from tests.unit.test_lio_fake import IQN, SECRETS, SN, FakeLio, lio_config

AO, SB, TR = AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY, AluaState.TRANSITIONING
FAR = 1e12


class FakeNetwork:
    """Addresses on this controller; ``refuse`` makes claim() find a duplicate."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.refuse: set[str] = set()

    def present(self, addresses) -> frozenset[str]:
        return frozenset(a.key for a in addresses if a.key in self.held)

    def claim(self, address: ManagedAddress, deadline: float, check_duplicates: bool = True) -> None:
        self.calls.append(("claim", address.key))
        if address.key in self.refuse:
            raise DuplicateAddress(address.key, "52:54:00:00:00:02")
        self.held.add(address.key)

    def release(self, address: ManagedAddress, deadline: float) -> None:
        self.calls.append(("release", address.key))
        self.held.discard(address.key)


class FakeNft:
    def __init__(self) -> None:
        self.rules = None
        self.undone: list[str] = []

    def replace(self, rules):
        changed = rules != self.rules
        self.rules = rules
        return changed, "undo-script" if changed else ""

    def run(self, script: str, json_output: bool = False) -> str:
        self.undone.append(script)
        return ""


def make(lio: FakeLio, cfg, node: str = "ctrl-a", **kw) -> LioPort:
    kw.setdefault("capacity_reader", lambda luns: [])
    return LioPort(cfg, node, network=kw.pop("network", FakeNetwork()), root=lio.root, proc=lio.proc, writer=lio,
                   nft=kw.pop("nft", FakeNft()), background=False, per_device_alua=True,
                   check_devices=kw.pop("check_devices", lambda cfg: []), **kw)


def states(lio: FakeLio) -> set[tuple[str, int]]:
    return {(g.name, g.state) for so in lio.snapshot().storage.values() for g in so.groups.values()}


def test_configure_then_observe_then_a_second_configure_touches_nothing(lio, devices):
    port = make(lio, lio_config(devices))
    assert not port.observe().configured
    assert "applied" in port.configure(time.monotonic() + 1)
    dp = port.observe()
    assert dp.configured and (dp.own_group, dp.peer_group) == (SB, SB) and dp.alua_changed_at is None
    ops = len(lio.ops)
    assert port.configure(time.monotonic() + 1) == "lio: already configured"
    assert len(lio.ops) == ops


def test_set_alua_switches_every_lun_and_records_when_our_group_changed(lio, devices):
    port = make(lio, lio_config(devices))
    port.configure(FAR)
    port.set_alua(AO, SB, time.monotonic() + 1)
    assert states(lio) == {("hac-node1", int(AO)), ("hac-node2", int(SB))}
    dp = port.observe()
    assert (dp.own_group, dp.peer_group) == (AO, SB) and dp.alua_changed_at is not None
    changed = dp.alua_changed_at
    port.set_alua(AO, TR, time.monotonic() + 1)  # only the peer's view: own group unchanged
    assert port.observe().alua_changed_at == changed


def test_luns_added_later_join_in_the_current_state(lio, devices):
    port = make(lio, lio_config(devices))
    port.configure(FAR)
    port.set_alua(AO, SB, FAR)
    luns = [{"id": 0, "name": "ds01", "device": devices[0], "serial": SN[0], "thin": True},
            {"id": 1, "name": "ds02", "device": devices[1], "serial": SN[1]},
            {"id": 2, "name": "ds03", "device": devices[2], "serial": SN[2]}]
    port.update_config(lio_config(devices, luns=luns))
    assert not port.observe().configured
    port.configure(FAR)
    new = lio.snapshot().storage["hac-ds03"]
    assert (new.groups["hac-node1"].state, new.groups["hac-node2"].state) == (int(AO), int(SB))
    assert port.observe().configured


def test_a_serving_controller_applies_in_steps_within_its_deadline(lio, devices):
    port = make(lio, lio_config(devices))
    port.configure(FAR)
    port.set_alua(AO, SB, FAR)
    luns = [{"id": i, "name": f"n{i}", "device": devices[i], "serial": f"{i:08x}{'c' * 24}"} for i in range(2, 6)]
    port.update_config(lio_config(devices, luns=[
        {"id": 0, "name": "ds01", "device": devices[0], "serial": SN[0], "thin": True},
        {"id": 1, "name": "ds02", "device": devices[1], "serial": SN[1]}, *luns]))
    first = port.configure(0.0)  # the deadline has passed: one unit, then stop
    assert "left for the next call" in first and not port.observe().configured
    for _ in range(10):
        if port.observe().configured:
            break
        port.configure(0.0)
    assert port.observe().configured and len(lio.snapshot().targets[IQN].tpgs[1].luns) == 6


def test_drift_is_found_and_repaired(lio, devices):
    port = make(lio, lio_config(devices), recheck_s=0.0)
    port.configure(FAR)
    port.observe()
    from hacontrol.adapters.lio.plan import Op

    lio.run(Op("set_so_attr", ("hac-ds01", "emulate_caw", "0")))  # someone changed LIO behind our back
    port.observe()  # runs the (inline) background check
    assert not port.observe().configured
    port.configure(FAR)
    assert lio.snapshot().storage["hac-ds01"].attrs["emulate_caw"] == "1" and port.observe().configured


BROKEN = {
    "node id 65535": lambda d: _with(lio_config(d), nodes_id=65535),
    "port takeover without portals": lambda d: _no_portals(lio_config(d)),
    "duplicate LUN names across targets": lambda d: lio_config(d, extra_targets=[{
        "iqn": "iqn.2026-11.com.example:b", "lun": [{"id": 0, "name": "ds01", "device": d[2], "serial": SN[2]}]}]),
    "targets on one port with different networks": lambda d: lio_config(d, extra_targets=[{
        "iqn": "iqn.2026-11.com.example:b", "allowed_networks": ["198.51.100.0/24"]}]),
    "chap_user ACL with LUN masking": lambda d: lio_config(d, acls=[
        {"chap_user": "any", "luns": [0], "auth": {"userid": "any", "secret": "Anyhost-Chap-1"}}]),
}


def _with(cfg, nodes_id: int):
    from dataclasses import replace

    return replace(cfg, nodes=(replace(cfg.nodes[0], id=nodes_id), cfg.nodes[1]))


def _no_portals(cfg):
    from dataclasses import replace

    return replace(cfg, nodes=tuple(replace(n, portals=()) for n in cfg.nodes))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_configuration_is_refused_before_anything_changes(lio, devices, name):
    port = make(lio, BROKEN[name](devices))
    with pytest.raises(AdapterError, match="nothing was changed"):
        port.configure(FAR)
    assert lio.ops == [] and not port.observe().configured


@pytest.mark.parametrize("problem", ["missing", "not a block device", "no discard"])
def test_devices_lio_cannot_export_are_refused_before_anything_changes(lio, devices, monkeypatch, problem):
    cfg = lio_config(devices)
    if problem == "missing":
        Path(devices[1]).unlink()
    elif problem == "no discard":
        monkeypatch.setattr(lio_desired, "device_error", lambda path: None)
        monkeypatch.setattr(lio_desired, "discard_supported", lambda path: False)
    port = make(lio, cfg, check_devices=lio_desired.host_problems)
    with pytest.raises(AdapterError, match="nothing was changed") as refused:
        port.configure(FAR)
    assert lio.ops == []
    assert {"missing": "does not exist", "not a block device": "not a block device",
            "no discard": "does not support discard"}[problem] in str(refused.value)


def test_adopt_sets_the_peer_group_active_enables_its_port_then_adds_its_addresses(lio, devices):
    network = FakeNetwork()
    port = make(lio, lio_config(devices), network=network)
    port.configure(FAR)
    port.set_alua(AO, SB, FAR)
    assert not port.observe().peer_ports_hosted
    port.adopt_peer(7, FAR)
    snap = lio.snapshot()
    assert snap.targets[IQN].tpgs[2].enabled and network.held == {"192.0.2.12/24"}
    assert states(lio) == {("hac-node1", int(AO)), ("hac-node2", int(AO))}
    dp = port.observe()
    assert dp.peer_ports_hosted and dp.serving and (dp.own_group, dp.peer_group) == (AO, AO)
    port.release_peer(FAR)
    assert not lio.snapshot().targets[IQN].tpgs[2].enabled and network.held == set()
    assert network.calls[-1] == ("release", "192.0.2.12/24")
    assert not port.observe().peer_ports_hosted and port.observe().peer_group == SB


def test_a_failed_adopt_is_undone(lio, devices):
    network = FakeNetwork()
    network.refuse.add("192.0.2.12/24")  # the peer still answers for its address
    port = make(lio, lio_config(devices), network=network)
    port.configure(FAR)
    port.set_alua(AO, SB, FAR)
    with pytest.raises(AdapterError, match="undone"):
        port.adopt_peer(7, FAR)
    assert not lio.snapshot().targets[IQN].tpgs[2].enabled
    assert states(lio) == {("hac-node1", int(AO)), ("hac-node2", int(SB))}
    assert not port.observe().peer_ports_hosted


def test_own_ports_are_brought_up_on_request_and_observed(lio, devices):
    network = FakeNetwork()
    port = make(lio, lio_config(devices), network=network)
    port.address_check_s = 0.0
    port.configure(FAR)
    assert not port.observe().own_ports_up
    port.bring_up_own(FAR)
    assert network.held == {"192.0.2.11/24"} and port.observe().own_ports_up
    port.take_down_own(FAR)
    assert network.held == set() and not port.observe().own_ports_up
    assert network.calls[-1] == ("release", "192.0.2.11/24")
    assert lio.snapshot().targets[IQN].tpgs[1].enabled  # only the addresses go: bringing them back is one step


def test_nftables_follow_the_configuration_and_are_undone_with_a_failed_apply(tmp_path, devices):
    nft = FakeNft()
    lio = FakeLio(tmp_path, fail=lambda op: op.kind == "set_tpg_enable")
    port = make(lio, lio_config(devices), nft=nft)
    with pytest.raises(AdapterError):
        port.configure(FAR)
    assert nft.undone == ["undo-script"]
    (rule,) = nft.rules
    assert (rule.port, rule.allowed) == (3260, ("192.0.2.0/24",))
    assert set(rule.portals) == {"192.0.2.10", "192.0.2.11", "192.0.2.12"}


def test_capacity_over_threshold_is_one_warning_a_metric_and_a_report(lio, devices):
    readings = [CapacityReading("ds01", devices[0], "dm-thin", 0.8, 0.85, "vg-pool"),
                CapacityReading("ds02", devices[1], "thick", 0.8)]
    seen = []
    port = make(lio, lio_config(devices), capacity_reader=lambda luns: readings, capacity_every_s=0.0)
    port.on_capacity = seen.append
    with capture_logs() as logs:
        port.observe()
        port.observe()
    events = [e for e in logs if e["event"] == "capacity_threshold"]
    assert len(events) == 1 and events[0]["lun"] == "ds01" and events[0]["used_percent"] == 85.0
    assert {r.lun for r in seen} == {"ds01"}
    assert port.capacity_report()[0]["over"] is True and port.capacity_report()[1]["used_ratio"] is None


def test_no_secret_in_logs_errors_or_reprs(tmp_path, devices):
    lio = FakeLio(tmp_path, fail=lambda op: op.kind == "set_acl_auth")
    port = make(lio, lio_config(devices))
    with capture_logs() as logs, pytest.raises(AdapterError) as failed:
        port.configure(FAR)
    text = repr(logs) + str(failed.value) + repr(port) + repr(port.cfg)
    assert not [s for s in SECRETS if s in text]


def test_a_distributed_configuration_lio_refuses_is_not_adopted(lio, devices):
    port = make(lio, lio_config(devices))
    port.configure(FAR)
    broken = lio_config(devices, extra_targets=[{"iqn": "iqn.2026-11.com.example:b", "lun": [
        {"id": 0, "name": "ds01", "device": devices[2], "serial": SN[2]}]}])
    with capture_logs() as logs:
        port.update_config(broken)
    assert [e["event"] for e in logs] == ["lio_config_rejected"]
    assert port.observe().configured and port.cfg is not broken


def test_initiators_reservations_are_reported_per_lun_and_a_change_republishes(lio, devices):
    from tests.unit.test_lio_reservations import HOLDER, NONE, REGISTERED, TG_PORT, TYPE

    port = make(lio, lio_config(devices), reservations_every_s=0.0)
    changed = []
    port.on_reservations_changed = lambda: changed.append(1)
    port.configure(FAR)
    port.observe()
    assert port.reservations_report() == [] and changed == []
    so = next(p for p in (lio.root / "core").glob("*/hac-ds01"))
    (so / "pr").mkdir(exist_ok=True)
    files = {"res_pr_registered_i_pts": REGISTERED, "res_holder": HOLDER, "res_pr_type": TYPE,
             "res_pr_holder_tg_port": TG_PORT, "res_pr_all_tgt_pts": NONE, "res_pr_generation": "0x3\n"}
    for name, text in files.items():
        (so / "pr" / name).write_text(text)
    port.observe()
    port.observe()
    report = port.reservations_report()
    assert [(r["lun"], r["registrations"], r["holder"]["type"]) for r in report] == [("ds01", 2, "WERO")]
    assert changed == [1]
    port.observe()
    assert changed == [1]  # unchanged: no second republish
