"""The LIO adapter's model, plan, apply and rollback against the directory-backed fake of test_lio_fake."""

from __future__ import annotations

from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from hacontrol.adapters.lio import names
from hacontrol.adapters.lio.apply import ApplyFailed, apply_units
from hacontrol.adapters.lio.desired import desired_state
from hacontrol.adapters.lio.plan import Op, Unit, plan, step_count
from hacontrol.core.model import AluaState
from tests.unit.test_lio_fake import ESX, HOST, IQN, SECRETS, SN, FakeLio, lio_config

AO, SB = int(AluaState.ACTIVE_OPTIMIZED), int(AluaState.STANDBY)


def kinds(units: list[Unit]) -> list[str]:
    return [s.do.kind for u in units for s in u.steps]


def converge(lio: FakeLio, cfg, node: str = "ctrl-a", alua: tuple[int, int] = (SB, SB)) -> list[Unit]:
    units = plan(desired_state(cfg, node), lio.snapshot(), alua)
    apply_units(lio, units, None)
    return units


# -- the desired model -------------------------------------------------------------------------------------

def test_each_controller_defines_its_own_port_the_peers_disabled_port_and_the_discovery_portals(devices):
    cfg = lio_config(devices)
    a, b = desired_state(cfg, "ctrl-a"), desired_state(cfg, "ctrl-b")
    own, peer, disc = (a.targets[0].tpg(r) for r in ("own", "peer", "discovery"))
    assert (own.tag, own.rtpi, own.enabled, own.portals) == (1, 1, True, ("192.0.2.11:3260",))
    assert (peer.tag, peer.rtpi, peer.enabled, peer.portals) == (2, 2, None, ("192.0.2.12:3260",))
    assert (disc.tag, disc.enabled, disc.portals, disc.luns) == (names.DISCOVERY_TAG, False, ("192.0.2.10:3260",), ())
    assert peer.attrs["tpg_enabled_sendtargets"] == "0" and own.attrs["tpg_enabled_sendtargets"] == "1"
    # Same identity on both controllers, mirrored roles.
    assert a.storage == b.storage
    assert {t.tag: t.rtpi for t in a.targets[0].tpgs} == {t.tag: t.rtpi for t in b.targets[0].tpgs}
    assert b.targets[0].tpg("own").tag == 2 and b.own_group.name == "hac-node2" and b.peer_group.id == 1
    assert [lun[2] for lun in own.luns] == ["hac-node1"] * 2 and [lun[2] for lun in peer.luns] == ["hac-node2"] * 2


def test_relative_port_ids_are_unique_per_controller_across_targets(devices):
    second = {"iqn": "iqn.2026-11.com.example:array2", "lun": [
        {"id": 0, "name": "ds03", "device": devices[2], "serial": SN[2]}], "acl": [{"initiator": ESX}]}
    d = desired_state(lio_config(devices, extra_targets=[second]), "ctrl-a")
    rtpis = [t.rtpi for dt in d.targets for t in dt.tpgs if t.rtpi is not None]
    assert sorted(rtpis) == [1, 2, 3, 4]


def test_vaai_attributes_follow_thin_and_the_vaai_table(devices):
    d = desired_state(lio_config(devices), "ctrl-a")
    thin, thick = d.storage
    assert thin.attrs == {"force_pr_aptpl": "1", "emulate_caw": "1", "emulate_3pc": "1", "emulate_tpu": "1",
                          "emulate_tpws": "1", "emulate_rsoc": "1", "emulate_model_alias": "0",
                          "max_unmap_lba_count": "1048576"}
    assert list(thin.attrs).index("max_unmap_lba_count") > list(thin.attrs).index("emulate_tpu")
    assert (thick.attrs["emulate_tpu"], thick.attrs["emulate_tpws"], thick.attrs["emulate_caw"]) == ("0", "0", "1")
    assert "max_unmap_lba_count" not in thick.attrs
    assert d.own_group.attrs["alua_access_type"] == "1"  # implicit only
    assert d.own_group.attrs["nonop_delay_msecs"] == "0" and d.own_group.attrs["implicit_trans_secs"] == "10"


def test_acl_chap_falls_back_to_the_target_and_luns_are_masked(devices):
    tpg = desired_state(lio_config(devices), "ctrl-a").targets[0].tpg("own")
    esx, host = tpg.acls
    assert (esx.initiator, esx.auth.userid, esx.auth.mutual_userid) == (ESX, "esx01", "array1-esx01")
    assert esx.mapped == (0, 1)
    assert (host.initiator, host.auth.userid, host.mapped, host.authentication) == (HOST, "array1", (0,), "1")
    assert tpg.attrs["generate_node_acls"] == "0"


def test_a_chap_user_acl_becomes_lios_dynamic_acls_with_tpg_chap(devices):
    acls = [{"chap_user": "anyhost", "auth": {"userid": "anyhost", "secret": "Anyhost-Chap-1"}}]
    tpg = desired_state(lio_config(devices, acls=acls), "ctrl-a").targets[0].tpg("own")
    assert tpg.acls == () and tpg.auth.userid == "anyhost"
    assert (tpg.attrs["generate_node_acls"], tpg.attrs["authentication"], tpg.attrs["demo_mode_write_protect"]) == \
        ("1", "1", "0")


# -- plans ------------------------------------------------------------------------------------------------------

def test_plan_from_empty_sets_alua_states_before_any_port_exports_a_lun_and_enables_last(lio, devices):
    units = plan(desired_state(lio_config(devices), "ctrl-a"), lio.snapshot(), (AO, SB))
    ks = kinds(units)
    assert [u.name for u in units][:3] == ["host", "lu group", f"target {IQN}"]
    assert [u.name for u in units][-2:] == ["enable ports", "discovery"]
    for so in ("hac-ds01", "hac-ds02"):
        steps = [s.do for u in units for s in u.steps if so in s.do.args]
        first_lun = next(i for i, op in enumerate(steps) if op.kind == "create_lun")
        states = [op for op in steps[:first_lun] if op.kind == "set_group_state"]
        assert {(op.args[1], op.args[2]) for op in states} == {("hac-node1", AO), ("hac-node2", SB)}
        assert steps.index(next(op for op in steps if op.kind == "set_lu_group")) < first_lun
    enables = [s.do for u in units for s in u.steps if s.do.kind == "set_tpg_enable"]
    assert enables == [Op("set_tpg_enable", (IQN, 1, True))]  # never the peer's or the discovery TPG
    assert ks.index("set_tpg_rtpi") < ks.index("set_tpg_enable")


def test_apply_then_replan_is_a_noop_that_touches_nothing(lio, devices):
    cfg = lio_config(devices)
    converge(lio, cfg)
    before = len(lio.ops)
    assert plan(desired_state(cfg, "ctrl-a"), lio.snapshot(), (SB, SB)) == []
    assert len(lio.ops) == before


def test_both_controllers_get_the_same_identity(tmp_path, devices):
    cfg = lio_config(devices)
    a, b = FakeLio(tmp_path / "a"), FakeLio(tmp_path / "b")
    converge(a, cfg, "ctrl-a")
    converge(b, cfg, "ctrl-b")
    sa, sb = a.snapshot(), b.snapshot()
    assert {n: (s.serial, s.udev_path) for n, s in sa.storage.items()} == \
        {n: (s.serial, s.udev_path) for n, s in sb.storage.items()}
    ta, tb = sa.targets[IQN].tpgs, sb.targets[IQN].tpgs
    ports = lambda tpgs: {t: (p.rtpi, sorted(p.portals)) for t, p in tpgs.items()}  # noqa: E731
    assert ports(ta) == ports(tb)
    assert (ta[1].enabled, ta[2].enabled, tb[1].enabled, tb[2].enabled) == (True, False, False, True)
    assert ta[1].luns[0].group == tb[1].luns[0].group == "hac-node1"


def test_one_changed_vaai_flag_changes_one_attribute(lio, devices):
    converge(lio, lio_config(devices))
    luns = [{"id": 0, "name": "ds01", "device": devices[0], "serial": SN[0], "thin": True, "vaai": {"xcopy": False}},
            {"id": 1, "name": "ds02", "device": devices[1], "serial": SN[1]}]
    units = plan(desired_state(lio_config(devices, luns=luns), "ctrl-a"), lio.snapshot(), (SB, SB))
    assert [str(s) for u in units for s in u.steps] == ["set_so_attr hac-ds01 emulate_3pc 0"]


def test_a_new_lun_is_one_unit_and_joins_in_the_current_alua_state(lio, devices):
    converge(lio, lio_config(devices), alua=(AO, SB))
    luns = [{"id": 0, "name": "ds01", "device": devices[0], "serial": SN[0], "thin": True},
            {"id": 1, "name": "ds02", "device": devices[1], "serial": SN[1]},
            {"id": 7, "name": "ds03", "device": devices[2], "serial": SN[2]}]
    units = plan(desired_state(lio_config(devices, luns=luns), "ctrl-a"), lio.snapshot(), (AO, SB))
    assert [u.name for u in units] == ["lun ds03"]
    apply_units(lio, units, None)
    so = lio.snapshot().storage["hac-ds03"]
    assert (so.groups["hac-node1"].state, so.groups["hac-node2"].state) == (AO, SB)
    tpg = lio.snapshot().targets[IQN].tpgs[1]
    assert tpg.luns[7].group == "hac-node1" and 7 in tpg.acls[ESX].mapped and 7 not in tpg.acls[HOST].mapped


def test_removed_luns_and_acls_go_last_and_only_hacontrol_objects_are_removed(lio, devices):
    converge(lio, lio_config(devices))
    lio.run(Op("create_so", ("foreign", devices[3], "f" * 16)))  # someone else's backstore
    luns = [{"id": 0, "name": "ds01", "device": devices[0], "serial": SN[0], "thin": True}]
    units = plan(desired_state(lio_config(devices, luns=luns, acls=[{"initiator": ESX}]), "ctrl-a"),
                 lio.snapshot(), (SB, SB))
    assert units[-1].name == "removals"
    removed = [str(s) for s in units[-1].steps]
    assert "delete_so hac-ds02" in removed and not any("foreign" in r for r in removed)
    assert any(r.startswith(f"delete_acl {IQN} 1 {HOST}") for r in removed)
    apply_units(lio, units, None)
    snap = lio.snapshot()
    assert set(snap.storage) == {"hac-ds01", "foreign"} and set(snap.targets[IQN].tpgs[1].luns) == {0}


def test_a_new_device_under_the_same_lun_is_unexported_deleted_and_recreated(lio, devices):
    converge(lio, lio_config(devices))
    luns = [{"id": 0, "name": "ds01", "device": devices[2], "serial": SN[0], "thin": True},
            {"id": 1, "name": "ds02", "device": devices[1], "serial": SN[1]}]
    cfg = lio_config(devices, luns=luns)
    units = plan(desired_state(cfg, "ctrl-a"), lio.snapshot(), (SB, SB))
    ks = kinds(units)
    assert ks.index("delete_lun") < ks.index("delete_so") < ks.index("create_so") < ks.index("create_lun")
    apply_units(lio, units, None)
    assert lio.snapshot().storage["hac-ds01"].udev_path == devices[2]
    assert plan(desired_state(cfg, "ctrl-a"), lio.snapshot(), (SB, SB)) == []


def test_a_changed_relative_port_id_on_an_enabled_tpg_disables_it_briefly(lio, devices):
    converge(lio, lio_config(devices))
    lio.run(Op("set_tpg_enable", (IQN, 1, False)))
    lio.run(Op("set_tpg_rtpi", (IQN, 1, 9)))
    lio.run(Op("set_tpg_enable", (IQN, 1, True)))
    units = plan(desired_state(lio_config(devices), "ctrl-a"), lio.snapshot(), (SB, SB))
    assert [str(s) for u in units for s in u.steps] == [
        f"set_tpg_enable {IQN} 1 False", f"set_tpg_rtpi {IQN} 1 1", f"set_tpg_enable {IQN} 1 True"]
    apply_units(lio, units, None)
    assert lio.snapshot().targets[IQN].tpgs[1].rtpi == 1


def test_secret_rotation_rewrites_only_that_acls_credentials(lio, devices):
    converge(lio, lio_config(devices))
    acls = [{"initiator": ESX, "auth": {"userid": "esx01", "secret": "Rotated-Chap-02", "mutual_userid": "array1-esx01",
                                        "mutual_secret": "Esx01-Mutual-K1"}}, {"initiator": HOST, "luns": [0]}]
    units = plan(desired_state(lio_config(devices, acls=acls), "ctrl-a"), lio.snapshot(), (SB, SB))
    assert [s.do.kind for u in units for s in u.steps] == ["set_acl_auth", "set_acl_auth"]  # both TPGs
    assert all("Rotated" not in str(s) and "Esx01" not in str(s) for u in units for s in u.steps)


def test_dropping_discovery_chap_stops_enforcing_before_clearing(lio, devices):
    converge(lio, lio_config(devices))
    units = plan(desired_state(lio_config(devices, discovery=False), "ctrl-a"), lio.snapshot(), (SB, SB))
    assert [str(s) for u in units for s in u.steps] == ["set_discovery_enforce False", "set_discovery_auth auth(none)"]


def test_a_target_no_longer_configured_is_removed_only_if_it_exports_hacontrol_backstores(lio, devices):
    converge(lio, lio_config(devices))
    lio.run(Op("create_target", ("iqn.2026-11.com.example:foreign",)))
    lio.run(Op("create_tpg", ("iqn.2026-11.com.example:foreign", 1)))
    lio.run(Op("create_so", ("other", devices[3], "e" * 16)))
    lio.run(Op("create_lun", ("iqn.2026-11.com.example:foreign", 1, 0, "other")))
    cfg = lio_config(devices, target={"iqn": "iqn.2026-11.com.example:renamed"})
    units = plan(desired_state(cfg, "ctrl-a"), lio.snapshot(), (SB, SB))
    removed = [str(s) for s in units[-1].steps]
    assert f"delete_target {IQN}" in removed and not any("foreign" in r for r in removed)


# -- transactions ----------------------------------------------------------------------------------------------

def _state(lio: FakeLio):
    snap = lio.snapshot()
    return replace(snap, host=replace(snap.host, state_dirs=False, nonlocal_bind=False))


@pytest.mark.parametrize("kind", ["create_target", "create_portal", "set_acl_auth", "create_so", "create_group",
                                  "set_lu_group", "create_lun", "set_lun_group", "create_mapped_lun",
                                  "set_tpg_enable", "set_discovery_enforce"])
def test_a_failed_step_rolls_back_everything_this_apply_did(tmp_path, devices, kind):
    base = FakeLio(tmp_path / "ref")
    lio = FakeLio(tmp_path / "x", fail=lambda op: op.kind == kind)
    before = _state(lio)
    units = plan(desired_state(lio_config(devices), "ctrl-a"), lio.snapshot(), (SB, SB))
    with capture_logs() as logs, pytest.raises(ApplyFailed, match=f"{kind}.*rolled back"):
        apply_units(lio, units, None)
    after = _state(lio)
    assert after.storage == before.storage == base.snapshot().storage
    assert after.targets == before.targets and after.lu_groups == before.lu_groups
    assert after.discovery_auth == before.discovery_auth
    assert any(e["event"] == "lio_rollback" for e in logs)


def test_rollback_of_an_update_restores_the_previous_values(lio, devices):
    converge(lio, lio_config(devices))
    before = lio.snapshot()
    luns = [{"id": 0, "name": "ds01", "device": devices[0], "serial": SN[0], "thin": False},
            {"id": 1, "name": "ds02", "device": devices[1], "serial": SN[1]},
            {"id": 2, "name": "ds03", "device": devices[2], "serial": SN[2]}]
    lio.fail = lambda op: op.kind == "create_mapped_lun"
    units = plan(desired_state(lio_config(devices, luns=luns), "ctrl-a"), lio.snapshot(), (SB, SB))
    with pytest.raises(ApplyFailed):
        apply_units(lio, units, None)
    assert lio.snapshot() == before


def test_secrets_never_reach_steps_errors_or_logs(tmp_path, devices):
    lio = FakeLio(tmp_path, fail=lambda op: op.kind == "set_discovery_auth")
    units = plan(desired_state(lio_config(devices), "ctrl-a"), lio.snapshot(), (SB, SB))
    text = " ".join(str(s) + repr(s) for u in units for s in u.steps)
    with capture_logs() as logs, pytest.raises(ApplyFailed) as failed:
        apply_units(lio, units, None)
    text += str(failed.value) + repr(logs) + repr(lio.snapshot())
    assert not [s for s in SECRETS if s in text]


def test_a_deadline_stops_between_units_and_the_rest_continues(lio, devices):
    ticks = iter(range(1000))
    units = plan(desired_state(lio_config(devices), "ctrl-a"), lio.snapshot(), (SB, SB))
    first = apply_units(lio, units, deadline=3, clock=lambda: next(ticks))
    assert not first.complete and 0 < first.units < len(units)
    assert not lio.snapshot().targets[IQN].tpgs[1].enabled  # never a partial set on an enabled port
    second = apply_units(lio, list(first.remaining), None)
    assert second.complete and step_count(units) == first.steps + second.steps
    assert plan(desired_state(lio_config(devices), "ctrl-a"), lio.snapshot(), (SB, SB)) == []
