"""The tgt adapter's validation, diff, apply and rollback, against the in-memory tgtd of test_tgt_fake."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from hacontrol.adapters.tgt import StepKind, TgtTarget
from hacontrol.adapters.tgt import commands as cmd
from hacontrol.adapters.tgt.desired import MODE_PAGE_WCE_OFF, MODE_PAGE_WCE_ON
from hacontrol.agent.protocols import AdapterError
from hacontrol.config import loads
from hacontrol.config.schema import Config, Secret
from hacontrol.core.model import AluaState
from tests.unit.test_tgt_fake import FakeRunner, FakeTgtd, chap, config_text, lun

IQN, IQN2 = "iqn.2026-11.com.example:array1", "iqn.2026-11.com.example:array2"
CLIENT, ESX = "iqn.2026-11.com.example:client", "iqn.1998-01.com.vmware:esx01-1a2b3c4d"
SN1, SN2 = "6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7", "0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e"
SN3 = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
SECRETS = ("Array1-Chap-01", "Array1-Mutual-1", "Esx01-Chap-Key1", "disc0very-Secr3t", "Rotated-Chap-02")


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("tgt-disks")
    paths = []
    for i in range(4):
        path = root / f"d{i}.img"
        with open(path, "wb") as f:
            f.truncate(1 << 20)
        paths.append(str(path))
    return paths


def base(disks: list[str], **changes: object) -> Config:
    """One target: two LUNs (the first thin), target CHAP with mutual, two initiator ACLs, discovery CHAP."""
    target = {"iqn": IQN, "allowed_networks": ["10.77.0.0/24"],
              "auth": chap("array1", "Array1-Chap-01", "array1-target", "Array1-Mutual-1"),
              "lun": [lun(1, disks[0], SN1, thin=True), lun(2, disks[1], SN2)],
              "acl": [{"initiator": CLIENT}, {"initiator": ESX}]}
    target |= changes
    return loads(config_text([target], discovery=chap("discovery", "disc0very-Secr3t")))


def adapter(fake: FakeTgtd, tid_base: int = 1, fail_at: int | None = None) -> TgtTarget:
    return TgtTarget(control_port=1, tid_base=tid_base, runner=FakeRunner(fake, fail_at))


def kinds(steps) -> list[StepKind]:
    return [s.kind for s in steps]


# -- plans ------------------------------------------------------------------------------------------------


def test_plan_from_empty_gives_luns_their_identity_before_any_initiator_is_admitted(disks):
    steps = adapter(FakeTgtd()).plan(base(disks), "ctrl-a")
    order = kinds(steps)
    assert order[:5] == [StepKind.CREATE_TARGET, StepKind.CREATE_LUN, StepKind.SET_LUN, StepKind.CREATE_LUN,
                         StepKind.SET_LUN]
    assert order.index(StepKind.BIND_ACL) > max(i for i, k in enumerate(order) if k is StepKind.BIND_ACCOUNT)
    identity = steps[2].command.args
    assert f"scsi_sn={SN1}" in identity[-1] and "scsi_id=6001405" + SN1[:25] in identity[-1]
    assert "thin_provisioning=1" in identity[-1] and f"mode_page={MODE_PAGE_WCE_OFF}" in identity[-1]
    assert steps[0].command.args[-1] == IQN


def test_apply_then_reapply_is_a_noop(disks):
    fake = FakeTgtd()
    target = adapter(fake)
    first = target.apply(base(disks), "ctrl-a")
    assert first.mutating_commands == len(first.steps) > 0
    before = target.runner.mutations
    second = target.apply(base(disks), "ctrl-a")
    assert second.noop and second.steps == () and target.runner.mutations == before
    assert target.configured(base(disks), "ctrl-a")
    assert fake.targets[1].luns[1].params["mode_page"] == MODE_PAGE_WCE_OFF


def test_changing_one_lun_setting_updates_only_that_lun(disks):
    target = adapter(FakeTgtd())
    target.apply(base(disks), "ctrl-a")
    changed = base(disks, lun=[lun(1, disks[0], SN1, thin=False), lun(2, disks[1], SN2)])
    steps = target.plan(changed, "ctrl-a")
    assert [(s.kind, s.command.args[-1]) for s in steps] == [(StepKind.SET_LUN, "thin_provisioning=0")]
    assert steps[0].undo == (cmd.update_lun(1, 1, ("thin_provisioning=1",)),)
    assert target.apply(changed, "ctrl-a").mutating_commands == 1
    assert target.plan(changed, "ctrl-a") == []


def test_serial_change_is_updated_in_place(disks):
    target = adapter(FakeTgtd())
    target.apply(base(disks), "ctrl-a")
    steps = target.plan(base(disks, lun=[lun(1, disks[0], SN1, thin=True), lun(2, disks[1], SN3)]), "ctrl-a")
    assert kinds(steps) == [StepKind.SET_LUN]
    assert steps[0].command.args[-1] == f"scsi_id=6001405{SN3[:25]},scsi_sn={SN3}"


def test_new_backing_store_under_the_same_lun_id_replaces_the_lun(disks):
    target = adapter(FakeTgtd())
    target.apply(base(disks), "ctrl-a")
    steps = target.plan(base(disks, lun=[lun(1, disks[0], SN1, thin=True), lun(2, disks[2], SN2)]), "ctrl-a")
    assert kinds(steps) == [StepKind.DELETE_LUN, StepKind.CREATE_LUN, StepKind.SET_LUN]
    assert "persistent reservations" in steps[0].note


def test_write_cache_is_remembered_adopted_or_reasserted(disks):
    fake = FakeTgtd()
    target = adapter(fake)
    target.apply(base(disks), "ctrl-a")
    cached = base(disks, lun=[lun(1, disks[0], SN1, thin=True, write_cache=True), lun(2, disks[1], SN2)])
    steps = target.plan(cached, "ctrl-a")
    assert kinds(steps) == [StepKind.SET_LUN] and steps[0].command.args[-1] == f"mode_page={MODE_PAGE_WCE_ON}"
    # A new adapter instance (agent restart, tgtd kept running) cannot see mode pages: it adopts them ...
    fresh = adapter(fake)
    assert fresh.plan(cached, "ctrl-a") == []
    # ... unless told to set everything it cannot see again.
    forced = kinds(fresh.plan(cached, "ctrl-a", reassert=True))
    assert forced.count(StepKind.SET_LUN) == 2  # both LUNs' vendor/product/mode page
    assert forced.count(StepKind.DELETE_ACCOUNT) == forced.count(StepKind.CREATE_ACCOUNT) == 3  # every secret
    fresh.apply(cached, "ctrl-a", reassert=True)
    assert fake.targets[1].luns[1].params["mode_page"] == MODE_PAGE_WCE_ON
    assert not fake.crashed


def test_secret_rotation_recreates_the_account_and_rebinds_it_everywhere(disks):
    fake = FakeTgtd()
    target = adapter(fake)
    target.apply(base(disks), "ctrl-a")
    rotated = base(disks, auth=chap("array1", "Rotated-Chap-02", "array1-target", "Array1-Mutual-1"))
    report = target.apply(rotated, "ctrl-a")
    assert fake.password("array1") == "Rotated-Chap-02"
    assert any("delete_account account array1" in s for s in report.steps)
    assert target.plan(rotated, "ctrl-a") == [] and not fake.crashed
    snap = target.observe()
    assert snap.target(IQN).incoming == ("array1",) and snap.target(IQN).outgoing == "array1-target"


def test_removing_an_account_unbinds_from_the_tail_so_tgtd_survives(disks):
    """tgt 1.0.85 crashes when a non-last incoming account is unbound (see test_tgt_fake)."""
    fake = FakeTgtd()
    target = adapter(fake)
    acls = [{"initiator": CLIENT, "auth": chap("client", "Client-Chap-01")},
            {"initiator": ESX, "auth": chap("esx01", "Esx01-Chap-Key1")}]
    target.apply(base(disks, acl=acls), "ctrl-a")
    assert target.observe().target(IQN).incoming == ("array1", "client", "esx01")
    without_target_chap = base(disks, acl=acls, auth=None)
    steps = target.plan(without_target_chap, "ctrl-a")
    unbinds = [s.subject for s in steps if s.kind is StepKind.UNBIND_ACCOUNT]
    binds = [s.subject for s in steps if s.kind is StepKind.BIND_ACCOUNT]
    assert unbinds == [f"{IQN} incoming esx01", f"{IQN} incoming client", f"{IQN} incoming array1",
                       f"{IQN} outgoing array1-target"]
    assert binds == [f"{IQN} incoming client", f"{IQN} incoming esx01"]
    target.apply(without_target_chap, "ctrl-a")
    assert not fake.crashed
    assert target.observe().target(IQN).incoming == ("client", "esx01")
    assert "array1" not in target.observe().accounts  # no longer configured, only ours used it


def test_foreign_targets_below_tid_base_are_left_alone(disks):
    fake = FakeTgtd()
    runner = FakeRunner(fake)
    runner.run(cmd.new_target(1, "iqn.2026-11.com.example:fencing"))
    runner.run(cmd.new_account("fence", Secret("Fence-Chap-001")))
    runner.run(cmd.account_binding(1, "fence", outgoing=False, bind=True))
    target = adapter(fake, tid_base=10)
    target.apply(base(disks), "ctrl-a")
    assert sorted(fake.targets) == [1, 10]
    assert target.apply(base(disks), "ctrl-a").noop
    snap = target.observe()
    assert snap.by_tid(1).incoming == ("fence",) and "fence" in snap.accounts


def test_a_configured_iqn_on_a_foreign_tid_is_refused(disks):
    fake = FakeTgtd()
    FakeRunner(fake).run(cmd.new_target(1, IQN))
    with pytest.raises(AdapterError, match=r"target\[0\]\.iqn.*below the adapter's tid_base 10"):
        adapter(fake, tid_base=10).apply(base(disks), "ctrl-a")


def test_targets_and_luns_no_longer_configured_are_removed_last(disks):
    fake = FakeTgtd()
    target = adapter(fake)
    two = loads(config_text([{"iqn": IQN, "lun": [lun(1, disks[0], SN1), lun(2, disks[1], SN2)],
                              "acl": [{"initiator": CLIENT}]},
                             {"iqn": IQN2, "lun": [lun(1, disks[2], SN3)], "acl": [{"initiator": CLIENT}]}]))
    target.apply(two, "ctrl-a")
    one = loads(config_text([{"iqn": IQN, "lun": [lun(1, disks[0], SN1)], "acl": [{"initiator": CLIENT}]}]))
    steps = target.plan(one, "ctrl-a")
    assert kinds(steps) == [StepKind.DELETE_LUN, StepKind.DELETE_TARGET]
    target.apply(one, "ctrl-a")
    assert sorted(fake.targets) == [1] and sorted(fake.targets[1].luns) == [0, 1]


# -- rollback ---------------------------------------------------------------------------------------------


def _passwords(fake: FakeTgtd) -> dict[str, str]:
    return {u: p for u, _, p in fake.accounts}


@pytest.mark.parametrize("fail_at", range(1, 20))
def test_a_failed_step_rolls_back_what_this_apply_did(disks, fail_at):
    fake = FakeTgtd()
    adapter(fake).apply(base(disks), "ctrl-a")
    target = adapter(fake)
    target.apply(base(disks), "ctrl-a")  # this instance now knows the secrets it set
    before, passwords = target.observe().without_sessions(), _passwords(fake)
    change = base(disks, auth=chap("array1", "Rotated-Chap-02", "array1-target", "Array1-Mutual-1"),
                  lun=[lun(1, disks[0], SN1), lun(3, disks[2], SN3)],
                  acl=[{"initiator": ESX, "auth": chap("esx01", "Esx01-Chap-Key1")}])
    total = len(target.plan(change, "ctrl-a"))
    target.runner.fail_at = target.runner.mutations + fail_at
    if fail_at > total:
        target.apply(change, "ctrl-a")
        return
    with pytest.raises(AdapterError, match=rf"failed at step {fail_at}/{total} .*injected failure"):
        target.apply(change, "ctrl-a")
    assert not fake.crashed
    assert target.observe().without_sessions() == before
    assert _passwords(fake) == passwords


def test_a_failed_step_keeps_secrets_out_of_errors_and_logs(disks):
    target = adapter(FakeTgtd(), fail_at=7)  # the second account creation
    with capture_logs() as logs, pytest.raises(AdapterError) as caught:
        target.apply(base(disks), "ctrl-a")
    text = str(caught.value) + repr(caught.value) + repr(logs)
    assert "create_account" in str(caught.value)
    for secret in SECRETS:
        assert secret not in text


def test_steps_and_commands_never_show_secrets(disks):
    steps = adapter(FakeTgtd()).plan(base(disks), "ctrl-a")
    shown = " ".join(f"{s} {s!r} {s.command} {s.command!r}" for s in steps)
    assert "--password ***" in shown
    for secret in SECRETS:
        assert secret not in shown
    creates = [s.command for s in steps if s.kind is StepKind.CREATE_ACCOUNT]
    assert creates[0].argv(7)[-2:] == ["--password", "Array1-Chap-01"]  # revealed for subprocess only


# -- refused configurations -------------------------------------------------------------------------------


def _refused(cfg: Config, match: str) -> None:
    fake = FakeTgtd()
    target = adapter(fake)
    with pytest.raises(AdapterError, match=match):
        target.apply(cfg, "ctrl-a")
    assert target.runner.mutations == 0 and not fake.targets


def test_lun_0_is_refused_with_the_fix(disks):
    _refused(base(disks, lun=[lun(0, disks[0], SN1)]),
             r"target\[0\]\.lun\[0\]\.id = 0: tgt reserves LUN 0 .*fix: number the LUNs of a tgt target from 1")


def test_per_initiator_lun_masking_is_refused(disks):
    _refused(base(disks, acl=[{"initiator": CLIENT, "luns": [1]}]), r"acl\[0\]\.luns.*cannot hide LUNs")


def test_serial_longer_than_tgt_keeps_is_refused(disks):
    _refused(base(disks, lun=[lun(1, disks[0], SN1 + "abcdef")]), r"lun\[0\]\.serial.*at most 36")


def test_two_mutual_identities_on_one_target_are_refused(disks):
    acls = [{"initiator": CLIENT, "auth": chap("client", "Client-Chap-01", "other-target", "Other-Mutual-1")}]
    _refused(base(disks, acl=acls), r"one mutual-CHAP identity per target")


def test_an_initiator_tgt_would_lock_out_is_refused(disks):
    cfg = base(disks, auth=None, acl=[{"initiator": CLIENT, "auth": chap("client", "Client-Chap-01")},
                                      {"initiator": ESX}])
    _refused(cfg, r"acl\[1\]\.auth.*would be locked out")


def test_one_user_with_two_secrets_is_refused(disks):
    _refused(base(disks, acl=[{"initiator": CLIENT, "auth": chap("discovery", "Another-Secret1")}]),
             r"one secret per user name")


def test_missing_backing_store_is_refused_before_anything_changes(disks, tmp_path):
    _refused(base(disks, lun=[lun(1, str(tmp_path / "nope.img"), SN1)]), r"lun\[0\]\.device.*does not exist")


def test_lio_configuration_and_unknown_node_are_refused(disks):
    cfg = loads(config_text([{"iqn": IQN, "lun": [lun(1, disks[0], SN1)]}], backend="lio").replace(
        "port_takeover = false", "port_takeover = true"))
    _refused(cfg, r"cluster\.backend")
    with pytest.raises(AdapterError, match=r"node = 'ctrl-z'"):
        adapter(FakeTgtd()).plan(base(disks), "ctrl-z")


def test_target_port_without_a_tgtd_portal_is_refused(disks):
    _refused(base(disks, port=3261), r"target\[0\]\.port = 3261: tgtd listens on no portal with this port")


# -- identity and the agent's port ------------------------------------------------------------------------


def tgt_naa_ieee_extended(scsi_id: str) -> int:
    """tgt 1.0.85 update_vpd_83: each character of scsi_id parsed as a hex digit, right-adjusted in 128 bits."""
    a = b = 0
    for ch in scsi_id:
        c = a >> 60
        a = (a << 4) & (2**64 - 1)
        b = ((b << 4) | c) & (2**64 - 1)
        a |= int(ch, 16) if ch in "0123456789abcdefABCDEF" else 0
    value = bytearray(b.to_bytes(8, "big") + a.to_bytes(8, "big"))
    value[0] = (value[0] & 0x0F) | 0x60
    return int.from_bytes(value, "big")


def test_scsi_id_makes_tgt_report_the_configured_naa(disks):
    cfg = base(disks)
    steps = adapter(FakeTgtd()).plan(cfg, "ctrl-a")
    params = dict(p.split("=", 1) for p in steps[2].command.args[-1].split(","))
    assert tgt_naa_ieee_extended(params["scsi_id"]) == int(cfg.targets[0].luns[0].naa.removeprefix("naa."), 16)


def test_target_port_reports_no_alua_and_refuses_to_set_it(disks):
    fake = FakeTgtd()
    target = adapter(fake)
    port = target.port(base(disks), "ctrl-a")
    assert port.observe().configured is False
    target.apply(base(disks), "ctrl-a")
    observed = port.observe()
    assert observed.configured is True and observed.own_group is None and observed.peer_group is None
    with pytest.raises(AdapterError, match="tgt has no ALUA"):
        port.set_alua(AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY, 0.0)


def test_repr_names_the_control_port_only():
    assert repr(TgtTarget(3261, "ns")) == "TgtTarget(control_port=3261, netns='ns', tid_base=1)"


def test_scrub_masks_an_echoed_password():
    from hacontrol.adapters.tgt.tgtadm import Command, _scrub

    command = Command(("--mode", "account", "--op", "new", "--user", "u"), password=Secret("Array1-Chap-01"))
    assert _scrub("bad password Array1-Chap-01", command) == "bad password ***"
    assert str(command) == "--mode account --op new --user u --password ***"


# -- any configuration to any other: reached, tgtd never crashed, a failure anywhere rolls back -----------

USERS, MUTUALS = ("u1", "u2", "u3"), ("m1", "m2")


def _secret(user: str, variant: int) -> str:
    return f"{user}-Secret-{variant:03d}"  # 13-14 characters, distinct per user and variant


@st.composite
def configs(draw: st.DrawFn, disks: list[str]) -> Config:
    variant = {u: draw(st.integers(0, 1)) for u in USERS + MUTUALS}  # a user's secret rotates between configs
    devices = iter(draw(st.permutations(disks)))
    targets = []
    for ti, iqn in enumerate(draw(st.sampled_from([[IQN], [IQN2], [IQN, IQN2]]))):
        auth = None
        if draw(st.booleans()):
            user, mutual = draw(st.sampled_from(USERS)), draw(st.sampled_from((None, *MUTUALS)))
            auth = chap(user, _secret(user, variant[user]), mutual, mutual and _secret(mutual, variant[mutual]))
        acls = []
        for initiator in draw(st.lists(st.sampled_from([CLIENT, ESX]), unique=True, max_size=2)):
            acl_user = draw(st.sampled_from((None, *USERS))) if auth else None
            acls.append({"initiator": initiator, "auth": acl_user and chap(acl_user, _secret(acl_user,
                                                                                             variant[acl_user]))})
        ids = draw(st.lists(st.integers(1, 3), unique=True, min_size=1, max_size=2))
        luns = [lun(i, next(devices), hashlib.md5(f"{ti}{i}{draw(st.integers(0, 1))}".encode()).hexdigest(),
                    thin=draw(st.booleans()), write_cache=draw(st.booleans())) for i in ids]
        networks = draw(st.sampled_from([[], ["10.77.0.0/24"]]))
        targets.append({"iqn": iqn, "allowed_networks": networks, "auth": auth, "lun": luns, "acl": acls})
    disc_user = draw(st.sampled_from((None, *USERS)))
    discovery = disc_user and chap(disc_user, _secret(disc_user, variant[disc_user]))
    return loads(config_text(targets, discovery=discovery))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_transition_is_reached_or_rolled_back(disks, data):
    first, second = data.draw(configs(disks)), data.draw(configs(disks))
    fake = FakeTgtd()
    target = adapter(fake)
    target.apply(first, "ctrl-a")
    before, passwords = target.observe().without_sessions(), _passwords(fake)
    steps = target.plan(second, "ctrl-a")
    fail_at = data.draw(st.integers(0, len(steps)))
    if fail_at == 0:
        target.apply(second, "ctrl-a")
        assert not fake.crashed
        assert target.plan(second, "ctrl-a") == []
        return
    target.runner.fail_at = target.runner.mutations + fail_at
    with pytest.raises(AdapterError, match="injected failure"):
        target.apply(second, "ctrl-a")
    assert not fake.crashed
    irreversible = any(s.kind is StepKind.DELETE_ACCOUNT and not s.undo for s in steps[: fail_at - 1])
    if not irreversible:
        assert target.observe().without_sessions() == before
        assert _passwords(fake) == passwords


@pytest.mark.parametrize(("network", "bound"), [("10.77.0.0/24", "10.77.0.0/24"), ("10.77.0.3/32", "10.77.0.3"),
                                                ("fd77::/64", "fd77::/64"), ("fd77::3/128", "fd77::3"),
                                                ("0.0.0.0/0", "ALL")])
def test_networks_are_bound_the_way_tgt_matches_them(disks, network, bound):
    """tgt never matches a /32 or /128 prefix and mishandles /0 (usr/iscsi/target.c netmask_match)."""
    steps = adapter(FakeTgtd()).plan(base(disks, acl=[], allowed_networks=[network]), "ctrl-a")
    assert [s.command.args[-1] for s in steps if s.kind is StepKind.BIND_ACL] == [bound]
