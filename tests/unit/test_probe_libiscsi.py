"""The ctypes bindings against the installed libiscsi: struct layout, sense parsing, login failures on loopback.

No network beyond loopback: a refused port and a listener that never answers.
"""

import ctypes
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from hacontrol.probe import libiscsi as li
from hacontrol.probe.sense import Sense, parse_sense
from hacontrol.probe.session import (
    CommandTimeout,
    ConnectionLost,
    Credentials,
    LoginFailed,
    Session,
    Target,
    cdb_inquiry,
    cdb_read16,
    cdb_read_capacity16,
    cdb_write16,
    parse_capacity16,
)

HEADERS = Path("/usr/include/iscsi/scsi-lowlevel.h")

try:
    li.load()
except li.LibiscsiMissing:  # pragma: no cover - the dev machines have it
    pytest.skip("libiscsi is not installed", allow_module_level=True)

LAYOUT_PROGRAM = r"""
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#define OFF(s, f) printf(#s "." #f " %zu\n", offsetof(struct s, f))
int main(void) {
    OFF(scsi_task, status); OFF(scsi_task, cdb); OFF(scsi_task, residual_status); OFF(scsi_task, residual);
    OFF(scsi_task, sense); OFF(scsi_task, datain); OFF(scsi_task, mem); OFF(scsi_task, ptr); OFF(scsi_task, itt);
    OFF(scsi_task, cmdsn); OFF(scsi_task, lun); OFF(scsi_task, iovector_in); OFF(scsi_task, iovector_out);
    OFF(scsi_sense, error_type); OFF(scsi_sense, key); OFF(scsi_sense, ascq); OFF(scsi_sense, bit_pointer);
    OFF(scsi_sense, field_pointer); OFF(scsi_data, size); OFF(scsi_data, data);
    OFF(iscsi_data, size); OFF(iscsi_data, data);
    printf("sizeof.scsi_task %zu\nsizeof.scsi_sense %zu\nsizeof.iscsi_data %zu\n",
           sizeof(struct scsi_task), sizeof(struct scsi_sense), sizeof(struct iscsi_data));
    return 0;
}
"""

STRUCTS = {"scsi_task": li.ScsiTask, "scsi_sense": li.ScsiSense, "scsi_data": li.ScsiData, "iscsi_data": li.IscsiData}


@pytest.mark.skipif(shutil.which("gcc") is None or not HEADERS.exists(), reason="needs gcc and libiscsi-dev")
def test_struct_layout_matches_the_compiler(tmp_path):
    source = tmp_path / "layout.c"
    source.write_text(LAYOUT_PROGRAM)
    subprocess.run(["gcc", "-o", str(tmp_path / "layout"), str(source)], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        name, value = line.split()
        kind, member = name.split(".")
        if kind == "sizeof":
            assert ctypes.sizeof(STRUCTS[member]) == int(value), name
        else:
            assert getattr(STRUCTS[kind], member).offset == int(value), name


def parse_with_libiscsi(raw: bytes) -> li.ScsiSense:
    sense = li.ScsiSense()
    buf = (ctypes.c_ubyte * 32).from_buffer_copy(raw.ljust(32, b"\0"))
    li.load().scsi_parse_sense_data(ctypes.byref(sense), buf)
    return sense


def test_libiscsi_and_python_agree_on_fixed_sense_with_sense_key_specific_field():
    # ILLEGAL REQUEST / INVALID FIELD IN CDB, SKSV + C/D + BPV, bit 5 of byte 0x0102.
    raw = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0x80 | 0x40 | 0x08 | 5, 0x01, 0x02])
    sense = parse_with_libiscsi(raw)
    assert (sense.error_type, sense.key, sense.ascq) == (0x70, 0x05, 0x2400)
    # The bitfields and the members after them are where the compiler put them (offsets 12..15).
    assert sense.flags & 0b111 == 0b111
    assert (sense.bit_pointer, sense.field_pointer) == (5, 0x0102)
    assert parse_sense(raw) == Sense(sense.key, sense.ascq >> 8, sense.ascq & 0xFF)


def test_libiscsi_and_python_agree_on_descriptor_sense():
    raw = bytes([0x72, 0x02, 0x04, 0x0A, 0, 0, 0, 0])
    sense = parse_with_libiscsi(raw)
    assert (sense.key, sense.ascq) == (0x02, 0x040A)
    assert parse_sense(raw) == Sense(0x02, 0x04, 0x0A)


def test_libiscsi_names_match_ours_where_both_have_one():
    lib = li.load()
    assert lib.scsi_sense_key_str(0x06) == b"UNIT_ATTENTION"
    assert lib.scsi_sense_ascq_str(0x2500) == b"LOGICAL_UNIT_NOT_SUPPORTED"


def test_cdbs():
    assert cdb_read16(0x0102030405060708, 9) == bytes.fromhex("8800010203040506070800000009" + "0000")
    assert cdb_write16(5, 1)[0] == 0x8A and len(cdb_write16(5, 1)) == 16
    assert cdb_inquiry(True, 0x83, 512) == bytes([0x12, 1, 0x83, 2, 0, 0])
    assert cdb_read_capacity16()[:2] == bytes([0x9E, 0x10]) and cdb_read_capacity16()[13] == 32
    assert parse_capacity16(bytes.fromhex("00000000000003ff00000200") + bytes(20)).blocks == 1024


TARGET = Target("iqn.2024-01.org.hacontrol:nowhere", 1, "iqn.2024-01.org.hacontrol:unit",
                Credentials("user", "s3cret-never-printed", "tuser", "t-s3cret-never-printed"))


def test_credentials_never_show_their_secrets():
    assert "s3cret" not in repr(TARGET)
    assert TARGET.redact("a s3cret-never-printed b") == "a *** b"


def test_only_an_oui_format_isid_can_be_set_and_a_fixed_one_reaches_a_context():
    with pytest.raises(ValueError, match="OUI format"):
        Target("iqn.x", 0, "iqn.y", isid=0x8000_0000_0001)  # type 10b (random)
    with pytest.raises(ValueError, match="OUI format"):
        Target("iqn.x", 0, "iqn.y", isid=-1)
    session = Session(Target("iqn.2024-01.org.hacontrol:x", 0, "iqn.2024-01.org.hacontrol:y", isid=0x023D0000010A))
    ctx = session._new_context()  # the library accepts it before any login (nothing is sent)
    session._lib.iscsi_destroy_context(ctx)


def test_refused_connect_is_a_login_failure_with_the_socket_error():
    with socket.socket() as probe_port:  # find a loopback port nobody listens on
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    session = Session(TARGET)
    with pytest.raises(LoginFailed, match="Connection refused") as info:
        session.connect(f"127.0.0.1:{port}", timeout_s=5)
    assert not session.connected and not info.value.timed_out and not info.value.configuration_error
    assert "s3cret" not in str(info.value)


def test_silent_target_is_a_login_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes the handshake; nobody ever answers the login
        session = Session(TARGET)
        with pytest.raises(LoginFailed, match="no answer") as info:
            session.connect(f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3)
        assert info.value.timed_out and not session.connected


def test_commands_need_a_session():
    session = Session(TARGET)
    with pytest.raises(ConnectionLost):
        session.test_unit_ready()
    with pytest.raises(ValueError, match="multiple"):
        session.write16(0, b"x" * 100, 512)
    assert issubclass(CommandTimeout, Exception)
