"""hactl probe vaai: parsers and verdicts on bytes captured from LIO 6.12 through hacontrol's adapter (the rig,
ctrl-b's Active/Optimized path; LUN 0 thin on a discard-capable shared disk, LUN 1 thick), and the CLI's TARGET."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hacontrol.cli.probe import UsageError, parse_target_url
from hacontrol.probe import vaai
from hacontrol.probe.sense import Sense

# Data-in of each command, as hex (captured by tests/rig/test_lio.py's probe through the rig).
CAPTURED = {
    0: {
        "inquiry": ("000006025b9810024c494f2d4f52472049424c4f434b20202020202020202020342e3020000000000000000000"
                    "0000000000000000000000000000a00960046004c0000000000000000000000000000000000000000000000000"
                    "000000000000"),
        "vpd_00": "0000000800808386b0b1b2b3",
        "vpd_80": "00800021366332663965316134623764346333653966313061326233633464356536663700",
        "vpd_83": ("008300bc0103001060014056c2f9e1a4b7d4c3e9f10a2b3c020100304c494f2d4f52472049424c4f434b3a3663"
                   "326639653161346237643463336539663130613262336334643565366637005194000400000002519500040000"
                   "000201060004000000015398003069716e2e323032362d31312e6f72672e6861636f6e74726f6c2e7269673a61"
                   "727261792c742c3078303030320000000053a8002469716e2e323032362d31312e6f72672e6861636f6e74726f"
                   "6c2e7269673a617272617900"),
        "vpd_b0": ("00b0003c010100080000fff80000fff800000000007fffff000000010000000800000000000000000000fff800"
                   "00000000000000000000000000000000000000"),
        "vpd_b2": "00b2000400e00000",
        "read_capacity16": "00000000001fffff000002000003800000000000000000000000000000000000",
        "rtpg": "00000018100a0000028d00010002000100000001008d000200020001",
        "rtpg_plain": "00000018028d00010002000100000001008d00020002000100000002",
        "rsoc COMPARE AND WRITE": "000300108918ffffffffffffffff000000ff0000",
        "rsoc EXTENDED COPY (LID1)": "0003001083000000000000000000ffffffff0000",
        "rsoc RECEIVE COPY OPERATING PARAMETERS": "0003001084030000000000000000ffffffff0000",
        "rsoc WRITE SAME (16)": "0003001093e8ffffffffffffffffffffffff0000",
        "rsoc WRITE SAME (10)": "0003000a41e8ffffffff00ffff00",
        "rsoc UNMAP": "0003000a42000000000000ffff00",
        "report_luns": "000000100000000000010000000000000000000000000000",
    },
    1: {
        "inquiry": ("000006025b9810024c494f2d4f52472049424c4f434b20202020202020202020342e3020000000000000000000"
                    "0000000000000000000000000000a00960046004c0000000000000000000000000000000000000000000000000"
                    "000000000000"),
        "vpd_00": "0000000800808386b0b1b2b3",
        "vpd_80": "00800021306239643863376536663561346233633264316530663961386237633664356500",
        "vpd_83": ("008300bc0103001060014050b9d8c7e6f5a4b3c2d1e0f9a8020100304c494f2d4f52472049424c4f434b3a3062"
                   "396438633765366635613462336332643165306639613862376336643565005194000400000002519500040000"
                   "000201060004000000015398003069716e2e323032362d31312e6f72672e6861636f6e74726f6c2e7269673a61"
                   "727261792c742c3078303030320000000053a8002469716e2e323032362d31312e6f72672e6861636f6e74726f"
                   "6c2e7269673a617272617900"),
        "vpd_b0": "00b00010010100080000fff80000fff800000000",
        "vpd_b2": "00b2000400000000",
        "read_capacity16": "000000000007ffff000002000003000000000000000000000000000000000000",
        "rtpg": "00000018100a0000028d00010002000100000001008d000200020001",
        "rtpg_plain": "00000018028d00010002000100000001008d00020002000100000002",
        "rsoc COMPARE AND WRITE": "000300108918ffffffffffffffff000000ff0000",
        "rsoc EXTENDED COPY (LID1)": "0003001083000000000000000000ffffffff0000",
        "rsoc RECEIVE COPY OPERATING PARAMETERS": "0003001084030000000000000000ffffffff0000",
        "rsoc WRITE SAME (16)": "0003001093e8ffffffffffffffffffffffff0000",
        "rsoc WRITE SAME (10)": "0003000a41e8ffffffff00ffff00",
        "rsoc UNMAP": "0001",
        "report_luns": "000000100000000000010000000000000000000000000000",
    },
}


def page(lun: int, name: str) -> bytes:
    return bytes.fromhex(CAPTURED[lun][name])


def test_standard_inquiry_reports_implicit_alua_and_third_party_copy():
    std = vaai.parse_inquiry(page(0, "inquiry"))
    assert (std.vendor, std.product, std.revision) == ("LIO-ORG", "IBLOCK", "4.0")
    assert std.tpgs == 1 and std.three_pc and std.peripheral_type == 0


def test_identity_is_the_configured_serial_and_its_naa_with_this_paths_port_and_group():
    assert vaai.parse_serial(page(0, "vpd_80")) == "6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7"
    ident = vaai.parse_device_identification(page(0, "vpd_83"))
    assert ident.naa == "naa.60014056c2f9e1a4b7d4c3e9f10a2b3c"  # = names.naa_from_serial of the serial
    assert (ident.relative_port, ident.port_group) == (2, 2)
    assert ident.target_port == "iqn.2026-11.org.hacontrol.rig:array,t,0x0002"


def test_block_limits_and_provisioning_of_a_thin_and_a_thick_lun():
    limits = vaai.parse_block_limits(page(0, "vpd_b0"))
    assert limits.max_compare_and_write == 1 and limits.max_unmap_lba_count > 0 and limits.max_unmap_descriptors == 1
    thin, thick = vaai.parse_lbp(page(0, "vpd_b2")), vaai.parse_lbp(page(1, "vpd_b2"))
    assert (thin.lbpu, thin.lbpws, thin.lbpws10) == (True, True, True)
    assert (thick.lbpu, thick.lbpws) == (False, False)
    assert vaai.parse_capacity16(page(0, "read_capacity16")).lbpme
    assert not vaai.parse_capacity16(page(1, "read_capacity16")).lbpme
    assert vaai.parse_capacity16(page(1, "read_capacity16")).block_size == 512


def test_supported_pages_and_opcodes():
    assert {0x80, 0x83, 0xB0, 0xB2} <= set(vaai.parse_supported_pages(page(0, "vpd_00")))
    assert vaai.parse_rsoc_one(page(0, "rsoc COMPARE AND WRITE"))
    assert vaai.parse_rsoc_one(page(0, "rsoc EXTENDED COPY (LID1)"))
    assert vaai.parse_rsoc_one(page(0, "rsoc UNMAP")) and not vaai.parse_rsoc_one(page(1, "rsoc UNMAP"))
    assert sorted(vaai.parse_report_luns(page(0, "report_luns"))) == [0, 1]


def test_rtpg_plain_format_is_complete_and_lios_extended_format_is_cut_short():
    groups, trans, truncated = vaai.parse_rtpg(page(0, "rtpg_plain"))
    assert [(g.id, g.state_name, g.ports) for g in groups] == [(1, "standby", (1,)), (2, "active/optimized", (2,))]
    assert trans is None and not truncated
    groups, trans, truncated = vaai.parse_rtpg(page(0, "rtpg"))
    assert trans == 10 and truncated  # LIO 6.12 returns the extended format 4 bytes short
    assert [(g.id, g.state_name, g.ports) for g in groups] == [(1, "standby", (1,)), (2, "active/optimized", ())]


@dataclass
class Result:
    data: bytes = b""
    ok: bool = True
    sense: Sense | None = None

    def describe(self) -> str:
        return "GOOD" if self.ok else "CHECK CONDITION"


class Replay:
    """Answers each CDB from the captured pages; the first command gets a UNIT ATTENTION."""

    def __init__(self, lun: int):
        self.lun, self.first = lun, True
        self.by_cdb = {vaai.cdb_inquiry(None, 96): "inquiry", vaai.cdb_read_capacity16(): "read_capacity16",
                       vaai.cdb_rtpg(): "rtpg"}
        self.by_cdb |= {vaai.cdb_inquiry(p): f"vpd_{p:02x}" for p in (0x00, 0x80, 0x83, 0xB0, 0xB2)}
        self.by_cdb |= {vaai.cdb_rsoc(op, sa): f"rsoc {label}" for op, sa, label in vaai.OPCODES}

    def execute(self, cdb: bytes, *, data_in_len: int = 0, data_out=None, timeout_s: float = 5.0) -> Result:
        if self.first:
            self.first = False
            return Result(ok=False, sense=Sense(0x6, 0x29, 0x00))
        return Result(page(self.lun, self.by_cdb[cdb]))


def test_the_verdict_is_what_esxi_reports_for_a_thin_and_a_thick_lun():
    thin, thick = vaai.probe_lun(Replay(0), 0), vaai.probe_lun(Replay(1), 1)
    assert (thin.ats, thin.clone, thin.zero, thin.delete, thin.thin_provisioning) == (True,) * 5
    assert (thick.ats, thick.clone, thick.zero, thick.delete, thick.thin_provisioning) == (True, True, True, False,
                                                                                          False)
    assert thin.errors == [] and thin.tpgs == "implicit" and thin.naa.startswith("naa.6001405")
    text = vaai.render([thin, thick])
    assert "Delete Status: supported" in text and "Delete Status: unsupported" in text
    assert "Thin Provisioning Status: yes" in text


def test_a_missing_primitive_is_reported_unsupported():
    replay = Replay(0)
    replay.first = False
    real = replay.execute

    def no_caw(cdb, **kw):
        return Result(bytes.fromhex("0001")) if cdb == vaai.cdb_rsoc(0x89, None) else real(cdb, **kw)

    replay.execute = no_caw
    assert not vaai.probe_lun(replay, 0).ats


@pytest.mark.parametrize(("text", "expected"), [
    ("iscsi://192.0.2.11/iqn.2026-11.com.example:a1", ("192.0.2.11:3260", "iqn.2026-11.com.example:a1", None)),
    ("192.0.2.11:3261/iqn.2026-11.com.example:a1/3", ("192.0.2.11:3261", "iqn.2026-11.com.example:a1", 3)),
])
def test_target_urls(text, expected):
    assert parse_target_url(text) == expected


@pytest.mark.parametrize("text", ["iscsi://user%secret@192.0.2.11/iqn.x", "192.0.2.11", "host/iqn.x/one"])
def test_bad_target_urls_are_refused(text):
    with pytest.raises(UsageError):
        parse_target_url(text)
