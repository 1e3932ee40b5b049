"""Carrying the initiators' reservations (adapters/lio/prsync.py) on the directory-backed fake LIO: what the
active publishes, and what a new active loads (exports removed, APTPL metadata written, exports re-created,
the ports closed meanwhile)."""

from __future__ import annotations

import time

from hacontrol.adapters.lio import reservations as pr
from tests.unit.test_lio_fake import SN, lio_config
from tests.unit.test_lio_port import FakeNft, make

FAR = time.monotonic() + 1e6
ESX = "iqn.1998-01.com.vmware:esx01"
IQN_T = "iqn.2026-11.org.hacontrol:array1"


def block(key: int, *, holder: bool = False, sid: str = "23d000001", tpgt: int = 1, rtpi: int = 1) -> dict[str, str]:
    return pr.aptpl_block(initiator=ESX, isid=sid, key=key, holder=holder, pr_type=5, all_target_ports=False,
                          target_iqn=IQN_T, tpg_tag=tpgt, rtpi=rtpi, lun=0)


def aptpl_file(lio, serial: str):
    return lio.root.parent / "dbroot" / "pr" / f"aptpl_{serial}"


def test_the_kernels_file_round_trips_and_compares_without_order():
    blocks = (block(7, holder=True), block(9, sid="23d000002"))
    text = pr.render_aptpl(blocks)
    assert pr.parse_aptpl(text) == blocks
    assert pr.canonical(pr.parse_aptpl(pr.render_aptpl(blocks[::-1]))) == pr.canonical(blocks)
    assert pr.parse_aptpl("No Registrations or Reservations\n") == () == pr.parse_aptpl("")
    assert pr.parse_aptpl(text.rsplit("PR_REG_END", 1)[0]) == blocks[:1]  # a block read half-written is left out
    lines = pr.metadata_lines(blocks)
    assert lines[0].startswith("initiator_fabric=iSCSI,initiator_node=") and ",res_type=5," in lines[0]


def test_a_new_active_keeps_its_standby_path_registrations_only_under_keys_the_active_still_had():
    published = (block(7, holder=True), block(9, sid="23d000002"))
    same_key_other_port = block(7, tpgt=2, rtpi=2) | {"res_holder": "1", "res_type": "3", "res_scope": "0"}
    preempted_key = block(5, tpgt=2, rtpi=2)  # removed on the active by a PREEMPT: must not come back
    merged = pr.merge(published, (same_key_other_port, preempted_key, block(7, holder=True)))
    assert merged[:2] == published
    assert len(merged) == 3 and merged[2]["port_rtpi"] == "2" and merged[2]["res_holder"] == "0"
    assert "res_type" not in merged[2]  # the reservation is the published one only
    assert pr.merge((), (block(7),)) == ()  # a CLEAR on the active


def test_created_storage_objects_write_their_aptpl_file_and_the_active_publishes_what_changed(lio, devices):
    port = make(lio, lio_config(devices))
    port.configure(FAR)
    port.observe()
    assert sorted(port.prsync.tracked()) == ["ds01", "ds02"]  # force_pr_aptpl set before the first export
    assert not port.observe().pr_unpublished
    aptpl_file(lio, SN[0]).parent.mkdir(parents=True, exist_ok=True)
    aptpl_file(lio, SN[0]).write_text(pr.render_aptpl((block(7, holder=True),)))
    assert port.observe().pr_unpublished
    changed = port.reservations_to_publish()
    assert list(changed) == ["ds01"]
    port.reservations_published(changed)
    assert not port.observe().pr_unpublished


def test_a_new_active_loads_what_differs_with_its_ports_closed_and_exports_recreated(lio, devices):
    nft = FakeNft()
    port = make(lio, lio_config(devices), nft=nft)
    port.configure(FAR)
    port.observe()
    published = {"ds01": {"epoch": 4, "node": "ctrl-b", "aptpl": pr.render_aptpl((block(7, holder=True),
                                                                                   block(9, sid="23d000002")))},
                 "ds02": {"epoch": 4, "node": "ctrl-b", "aptpl": "No Registrations or Reservations\n"}}
    before = len(lio.ops)
    summary = port.load_reservations(5, published, False, FAR)
    assert summary == "1 LUN(s) loaded"  # ds02 holds nothing here either: left exported
    ops = [str(op.kind) for op in lio.ops[before:]]
    assert ops.count("delete_lun") == 2 and ops.count("create_lun") == 2  # ds01 in both TPGs, gone and back
    so = next((lio.root / "core").glob("*/hac-ds01"))
    assert (so / "pr" / "res_aptpl_metadata").read_text().startswith("initiator_fabric=iSCSI")  # the last line
    assert pr.parse_aptpl(aptpl_file(lio, SN[0]).read_text()) == pr.parse_aptpl(published["ds01"]["aptpl"])
    assert "drop" in nft.undone[0] and nft.undone[1].startswith("delete table")  # closed, then opened again
    dp = port.observe()
    assert dp.configured and dp.pr_loaded_epoch == 5
    assert dp.pr_unpublished  # the loaded state is published again under the new epoch
    assert port.load_reservations(6, published, False, FAR) == "0 LUN(s) loaded"  # the same state: nothing moves


def test_keeping_the_local_state_touches_nothing_and_publishes_it(lio, devices):
    port = make(lio, lio_config(devices))
    port.configure(FAR)
    aptpl_file(lio, SN[0]).parent.mkdir(parents=True, exist_ok=True)
    aptpl_file(lio, SN[0]).write_text(pr.render_aptpl((block(7),)))
    port.observe()
    before = len(lio.ops)
    assert "kept" in port.load_reservations(5, {"ds01": {"aptpl": ""}}, True, FAR)
    assert len(lio.ops) == before
    assert port.observe().pr_loaded_epoch == 5 and list(port.reservations_to_publish()) == ["ds01"]


def test_a_finished_file_is_published_first_only_while_this_controller_serves_under_a_loaded_epoch(lio, devices):
    """prsync's half of the served directory (prstore.py; the kernel's half: tests/integration/test_prstore.py):
    a standby keeps the file; after the takeover's load each one is published under the epoch before the write
    returns, or the write fails; a LUN whose load failed refuses; a step down (ALUA) ends it."""
    import pytest

    from hacontrol.agent.protocols import AdapterError
    from hacontrol.core.model import AluaState

    port = make(lio, lio_config(devices))
    port.configure(FAR)
    port.observe()
    calls = []
    port.prsync._publish = lambda epoch, changed, deadline: calls.append((epoch, changed))
    name, text = f"aptpl_{SN[0]}", pr.render_aptpl((block(7),))
    port.prsync.file_written(name, text)
    assert calls == []  # a standby: kept here (merged at a takeover)
    port.load_reservations(5, {}, False, FAR)
    port.prsync.file_written(name, text)
    assert calls == []  # loaded, but its ports do not serve yet (SetAlua comes after the load)
    port.set_alua(AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY, FAR)
    port.prsync.file_written(name, text)
    port.prsync.file_written("aptpl_not-ours", text)  # a file of no configured LUN: nothing to publish
    assert calls == [(5, {"ds01": text})]
    port.prsync.not_loaded["ds01"] = "OSError: EINVAL"
    with pytest.raises(AdapterError, match="were not loaded here"):
        port.prsync.file_written(name, text)
    del port.prsync.not_loaded["ds01"]

    def refuse(epoch, changed, deadline):
        raise AdapterError("epoch 5 is over")
    port.prsync._publish = refuse
    with pytest.raises(AdapterError, match="is over"):  # the store answers EIO: LIO fails the PR-OUT
        port.prsync.file_written(name, text)
    port.set_alua(AluaState.STANDBY, AluaState.ACTIVE_OPTIMIZED, FAR)
    port.prsync.file_written(name, text)  # stepped down (its lease lapsed): a standby's file again
    assert port.reservations_sync_report()["synchronous"] is False
    calls.clear()
    port.prsync._publish = lambda epoch, changed, deadline: calls.append((epoch, changed))
    port.set_alua(AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY, FAR)  # serving again under the same epoch
    port.prsync.file_written(name, text)
    assert calls == [(5, {"ds01": text})] and port.reservations_sync_report()["synchronous"] is True


def test_without_fuse_the_agent_goes_on_reading_the_files_and_says_so(lio, devices):
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from hacontrol.adapters.lio.prstore import StoreError
    from hacontrol.agent.build import serve_reservation_files

    cfg = lio_config(devices)
    port = make(lio, cfg)
    seen = []

    def no_fuse(publish, budget_s, backing):
        seen.append((budget_s, backing.name))
        raise StoreError("/dev/fuse: No such file or directory (is the fuse module loaded?)")
    port.serve_reservation_files = no_fuse
    ctl = SimpleNamespace(extras={"target": port}, coordinator=SimpleNamespace(publish_reservations=None),
                          node="ctrl-a")
    with capture_logs() as logs:
        assert serve_reservation_files(cfg, ctl) is None
    assert seen == [(min(1.0, cfg.timing.session_timeout_s / 4), "ctrl-a.pr")]
    assert [e["event"] for e in logs] == ["lio_pr_store_unavailable"]
    assert port.reservations_sync_report()["served"] is False
    assert serve_reservation_files(cfg, SimpleNamespace(extras={"target": object()})) is None  # tgt: none


def test_a_served_directorys_mount_is_recognised_whatever_type_mountinfo_shows():
    from hacontrol.adapters.lio.prstore import BASE_SOURCE, FSTYPE, FUSE_SOURCE, ours

    # util-linux on the host shows the subtype, the Debian 13 guests' shows "fuse": a restarted agent must
    # detach a dead predecessor's mount either way (else it cannot serve the directory again)
    assert ours((FSTYPE, FUSE_SOURCE)) and ours(("fuse", FUSE_SOURCE))
    assert not ours(("tmpfs", BASE_SOURCE)) and not ours(("fuse", "sshfs#host"))
