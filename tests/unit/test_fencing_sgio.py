"""The SG_IO transport behind its ioctl seam: what it puts in sg_io_hdr, how it reads the answer back.

The fake ioctl plays the kernel: it reads the CDB and data-out through the header's pointers and writes
status, sense and data-in back the way SG_IO does. The layout test pins struct sg_io_hdr to the x86-64 ABI
(values from gcc against <scsi/sg.h>: 88 bytes, status at 64, host_status at 68, resid at 72).
"""

import ctypes
import errno

import pytest

from hacontrol.adapters.fencing import pr_codec as pr
from hacontrol.adapters.fencing.pr_transport import (
    SG_DXFER_FROM_DEV,
    SG_DXFER_NONE,
    SG_DXFER_TO_DEV,
    SG_IO,
    SgIoHdr,
    SgIoTransport,
    TransportError,
    open_transport,
    parse_iscsi_url,
)
from hacontrol.probe.sense import Sense


def fixed_sense(key: int, asc: int, ascq: int) -> bytes:
    raw = bytearray(18)
    raw[0], raw[2], raw[7], raw[12], raw[13] = 0x70, key, 10, asc, ascq
    return bytes(raw)


def descriptor_sense(key: int, asc: int, ascq: int) -> bytes:
    # descriptor format with one information descriptor (type 0), as some HBAs return it
    return bytes([0x72, key, asc, ascq, 0, 0, 0, 12, 0x00, 0x0A, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0])


class FakeKernel:
    """Answers SG_IO like the kernel would; records what it was given."""

    def __init__(self, status=0, sense=b"", data_in=b"", *, host_status=0, driver_status=0, error=None):
        self.status, self.sense, self.data_in = status, sense, data_in
        self.host_status, self.driver_status, self.error = host_status, driver_status, error
        self.calls = []

    def __call__(self, fd, request, hdr):
        assert request == SG_IO and hdr.interface_id == ord("S")
        cdb = ctypes.string_at(hdr.cmdp, hdr.cmd_len)
        out = ctypes.string_at(hdr.dxferp, hdr.dxfer_len) if hdr.dxfer_direction == SG_DXFER_TO_DEV else None
        self.calls.append({"fd": fd, "cdb": cdb, "out": out, "direction": hdr.dxfer_direction,
                           "len": hdr.dxfer_len, "timeout_ms": hdr.timeout, "mx_sb_len": hdr.mx_sb_len})
        if self.error is not None:
            raise self.error
        if hdr.dxfer_direction == SG_DXFER_FROM_DEV and self.data_in:
            n = min(len(self.data_in), hdr.dxfer_len)
            ctypes.memmove(hdr.dxferp, self.data_in, n)
            hdr.resid = hdr.dxfer_len - n
        if self.sense:
            ctypes.memmove(hdr.sbp, self.sense, len(self.sense))
            hdr.sb_len_wr = len(self.sense)
        hdr.status, hdr.host_status, hdr.driver_status = self.status, self.host_status, self.driver_status
        return 0


def transport(kernel: FakeKernel, opened: list | None = None) -> SgIoTransport:
    def opener(path):
        if opened is not None:
            opened.append(path)
        return 42

    return SgIoTransport("/dev/disk/by-id/wwn-0x5000", ioctl=kernel, opener=opener)


def test_header_layout_matches_the_kernel_abi():
    assert ctypes.sizeof(SgIoHdr) == 88
    assert SgIoHdr.status.offset == 64 and SgIoHdr.host_status.offset == 68
    assert SgIoHdr.driver_status.offset == 70 and SgIoHdr.resid.offset == 72
    assert SgIoHdr.timeout.offset == 40 and SgIoHdr.sbp.offset == 32 and SgIoHdr.usr_ptr.offset == 56


def test_pr_in_data_comes_back_trimmed_by_resid():
    keys = bytes.fromhex("00000003 00000008 0000000100000002")
    kernel = FakeKernel(data_in=keys)
    cdb = pr.cdb_pr_in(pr.PrIn.READ_KEYS, 8192)
    reply = transport(kernel).command(cdb, data_in_len=8192, timeout_s=1.5)
    assert reply.ok and reply.data == keys
    call = kernel.calls[0]
    assert call["cdb"] == cdb and call["direction"] == SG_DXFER_FROM_DEV and call["len"] == 8192
    assert call["timeout_ms"] == 1500 and call["mx_sb_len"] >= 32


def test_pr_out_sends_the_parameter_list():
    kernel = FakeKernel()
    command = pr.register_and_ignore(pr.pr_key(1, 3))
    assert transport(kernel).command(command.cdb, data_out=command.data, timeout_s=1).ok
    assert kernel.calls[0]["out"] == command.data and kernel.calls[0]["direction"] == SG_DXFER_TO_DEV


def test_no_data_command():
    kernel = FakeKernel()
    transport(kernel).command(bytes(6), timeout_s=0.0001)
    assert kernel.calls[0]["direction"] == SG_DXFER_NONE and kernel.calls[0]["timeout_ms"] == 1  # never 0 (= default)


@pytest.mark.parametrize("encode", [fixed_sense, descriptor_sense], ids=["fixed", "descriptor"])
def test_check_condition_sense_is_decoded_in_both_formats(encode):
    kernel = FakeKernel(status=0x02, sense=encode(0x5, 0x24, 0x00), driver_status=0x08)
    reply = transport(kernel).command(b"\x5f\x05" + bytes(8), data_out=bytes(24), timeout_s=1)
    assert not reply.ok and reply.sense == Sense(0x5, 0x24, 0x00)
    assert reply.describe() == "CHECK CONDITION ILLEGAL REQUEST 05/24/00: INVALID FIELD IN CDB"


def test_reservation_conflict_is_an_answer_despite_nexus_failure_host_byte():
    kernel = FakeKernel(status=0x18, host_status=0x11)  # Linux sets DID_NEXUS_FAILURE with the status
    reply = transport(kernel).command(b"\x8a" + bytes(15), timeout_s=1)
    assert reply.status == 0x18 and reply.describe() == "RESERVATION CONFLICT"


@pytest.mark.parametrize(("host", "driver", "text"), [(0x01, 0, "DID_NO_CONNECT"), (0x03, 0, "DID_TIME_OUT"),
                                                       (0x0E, 0, "DID_TRANSPORT_DISRUPTED"),
                                                       (0, 0x06, "timed out in the kernel")])
def test_no_answer_is_a_transport_error_naming_the_device(host, driver, text):
    kernel = FakeKernel(host_status=host, driver_status=driver)
    with pytest.raises(TransportError, match=text) as caught:
        transport(kernel).command(pr.cdb_pr_in(pr.PrIn.READ_KEYS, 8192), data_in_len=8192, timeout_s=1)
    assert "/dev/disk/by-id/wwn-0x5000" in str(caught.value) and "0x5E" in str(caught.value)


def test_vanished_device_is_reopened_on_the_next_command():
    opened: list = []
    kernel = FakeKernel(error=OSError(errno.ENODEV, "No such device"))
    t = transport(kernel, opened)
    with pytest.raises(TransportError, match="No such device"):
        t.command(bytes(6), timeout_s=1)
    kernel.error = None
    assert t.command(bytes(6), timeout_s=1).ok
    assert len(opened) == 2


def test_device_stays_open_between_commands():
    opened: list = []
    t = transport(FakeKernel(), opened)
    for _ in range(3):
        t.command(bytes(6), timeout_s=1)
    assert len(opened) == 1


def test_open_failure_names_the_device_and_the_fix():
    def opener(path):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    t = SgIoTransport("/dev/disk/by-id/missing", ioctl=FakeKernel(), opener=opener)
    with pytest.raises(TransportError, match=r"/dev/disk/by-id/missing: cannot open .*check the device path"):
        t.command(bytes(6), timeout_s=1)


def test_no_time_left_sends_nothing():
    kernel = FakeKernel()
    with pytest.raises(TransportError, match="no time left"):
        transport(kernel).command(bytes(6), timeout_s=0)
    assert kernel.calls == []


def test_iscsi_urls():
    assert parse_iscsi_url("iscsi://10.77.0.1/iqn.2024-01.org.x:t/2").portal == "10.77.0.1:3260"
    a = parse_iscsi_url("iscsi://[fd77::1]:3261/iqn.2024-01.org.x:t/1")
    assert (a.portal, a.iqn, a.lun) == ("[fd77::1]:3261", "iqn.2024-01.org.x:t", 1)
    with pytest.raises(ValueError, match="must not carry credentials") as caught:
        parse_iscsi_url("iscsi://user%secret@10.0.0.1/iqn/1")
    assert "secret" not in str(caught.value)
    with pytest.raises(ValueError, match="iscsi://HOST"):
        parse_iscsi_url("iscsi://10.0.0.1/iqn-without-lun")


def test_device_paths_get_sg_io():
    assert isinstance(open_transport("/dev/sdb", "iqn.x"), SgIoTransport)


def test_the_real_ioctl_on_a_node_without_sg_io_is_a_clean_transport_error():
    """The production path (os.open + fcntl.ioctl on the ctypes header) up to the kernel's refusal."""
    t = SgIoTransport("/dev/null")
    with pytest.raises(TransportError, match=r"/dev/null: SG_IO failed for opcode 0x5E: "):
        t.command(pr.cdb_pr_in(pr.PrIn.READ_KEYS, 8192), data_in_len=8192, timeout_s=1)
    t.close()
