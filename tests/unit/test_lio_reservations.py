"""LIO's configfs view of the initiators' persistent reservations, parsed (texts as the kernel's
target_core_configfs.c prints them), and read from a directory laid out like configfs."""

from __future__ import annotations

from pathlib import Path

from hacontrol.adapters.lio.reservations import (
    Holder,
    Registration,
    lun_reservations,
    parse_holder,
    parse_registrations,
    read_reservations,
)
from tests.unit.test_lio_fake import lio_config

A, B = "iqn.2024-01.org.hacontrol:probe", "iqn.1998-01.com.vmware:esx01-4f1a"
REGISTERED = (f"SPC-3 PR Registrations:\niSCSI Node: {A},i,0x23d000001 Key: 0x00000000000000a1 PRgen: 0x00000001\n"
              f"iSCSI Node: {B},i,0x00023D000002 Key: 0x00000000000000b2 PRgen: 0x00000003\n")
HOLDER = f"SPC-3 Reservation: iSCSI Initiator: {A},i,0x23d000001\n"
TYPE = "SPC-3 Reservation Type: Write Exclusive Access, Registrants Only\n"
TG_PORT = ("SPC-3 Reservation: iSCSI Target Node Endpoint: iqn.2026-11.org.hacontrol.rig:array\n"
           "SPC-3 Reservation: Relative Port Identifier Tag: 2 iSCSI Portal Group Tag: 2 iSCSI Logical Unit: 0\n")
NONE = "No SPC-3 Reservation holder\n"


def test_each_registration_line_gives_the_initiator_port_and_key():
    assert parse_registrations(REGISTERED) == (
        Registration(A, "23d000001", 0xA1, 1), Registration(B, "00023d000002", 0xB2, 3))
    assert parse_registrations("SPC-3 PR Registrations:\nNone\n") == ()
    assert parse_registrations(f"SPC-3 PR Registrations:\niSCSI Node: {A} Key: 0x1 PRgen: 0x0\n") == (
        Registration(A, "", 1, 0),)


def test_the_holder_comes_with_its_type_and_target_port():
    h = parse_holder(HOLDER, TYPE, TG_PORT, "SPC-3 Reservation: Single Target Port registration\n")
    assert h == Holder(A, "23d000001", 5, "Write Exclusive Access, Registrants Only", 2, 2, False)
    all_ports = parse_holder(HOLDER, "SPC-3 Reservation Type: Exclusive Access\n", TG_PORT,
                             "SPC-3 Reservation: All Target Ports registration\n")
    assert all_ports is not None and all_ports.type == 3 and all_ports.all_target_ports


def test_no_holder_and_half_changed_files_read_as_no_holder():
    assert parse_holder(NONE, NONE, NONE, NONE) is None
    assert parse_holder(HOLDER, NONE, TG_PORT, NONE) is None  # released between the two reads


def _pr_dir(base: Path, hba: str, so: str, files: dict[str, str]) -> Path:
    d = base / "core" / hba / so / "pr"
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d.parent


def test_read_reservations_reports_the_configured_luns_in_order(tmp_path):
    cfg = lio_config(["/dev/sdb", "/dev/sdc"])
    ds01 = _pr_dir(tmp_path, "iblock_0", "hac-ds01", {
        "res_pr_registered_i_pts": REGISTERED, "res_holder": HOLDER, "res_pr_type": TYPE,
        "res_pr_holder_tg_port": TG_PORT, "res_pr_all_tgt_pts": "SPC-3 Reservation: Single Target Port "
        "registration\n", "res_pr_generation": "0x00000003\n"})
    ds02 = _pr_dir(tmp_path, "iblock_1", "hac-ds02", {
        "res_pr_registered_i_pts": "SPC-3 PR Registrations:\nNone\n", "res_holder": NONE, "res_pr_type": NONE,
        "res_pr_holder_tg_port": NONE, "res_pr_all_tgt_pts": NONE, "res_pr_generation": "0x00000000\n"})
    foreign = _pr_dir(tmp_path, "iblock_1", "someone-elses", {"res_pr_generation": "0x00000009\n"})
    dirs = {"hac-ds02": ds02, "hac-ds01": ds01, "someone-elses": foreign}
    got = read_reservations(cfg, dirs)
    assert [r.lun for r in got] == ["ds01", "ds02"]
    assert got[0].as_dict() == {"lun": "ds01", "registrations": 2, "generation": 3, "keys": ["0xa1", "0xb2"],
                                "holder": {"initiator": A, "isid": "23d000001", "type": "WERO", "rtpi": 2,
                                           "all_target_ports": False}}
    assert got[1].as_dict()["registrations"] == 0 and got[1].holder is None


def test_a_storage_object_without_a_pr_directory_is_left_out(tmp_path):
    so = tmp_path / "core" / "iblock_0" / "hac-ds01"
    so.mkdir(parents=True)
    assert lun_reservations("ds01", str(so / "pr")) is None
    assert read_reservations(lio_config(["/dev/sdb", "/dev/sdc"]), {"hac-ds01": so}) == []


def test_a_registration_becomes_one_line_of_the_kernels_aptpl_metadata():
    from hacontrol.adapters.lio.reservations import aptpl_block, metadata_lines, port_of_rtpi

    def aptpl_line(**kw):
        return metadata_lines((aptpl_block(**kw),))[0]

    cfg = lio_config(["/dev/sdb", "/dev/sdc"])
    iqn = cfg.targets[0].iqn
    assert port_of_rtpi(cfg, 1) == (iqn, 1) and port_of_rtpi(cfg, 2) == (iqn, 2) and port_of_rtpi(cfg, 9) is None
    line = aptpl_line(initiator=A, isid="023D00000101", key=0xA1, holder=True, pr_type=5, all_target_ports=False,
                      target_iqn=iqn, tpg_tag=1, rtpi=1, lun=1)
    assert line == (f"initiator_fabric=iSCSI,initiator_node={A},initiator_sid=023d00000101,sa_res_key=161,"
                    f"res_holder=1,res_type=5,res_scope=0,res_all_tg_pt=0,mapped_lun=1,target_fabric=iSCSI,"
                    f"target_node={iqn},tpgt=1,port_rtpi=1,target_lun=1")
    plain = aptpl_line(initiator=B, isid="", key=0xB2, holder=False, pr_type=5, all_target_ports=True,
                       target_iqn=iqn, tpg_tag=2, rtpi=2, lun=0)
    assert "initiator_sid" not in plain and "res_type=0" in plain and "res_all_tg_pt=1" in plain
