"""The probe's I/O engine on a block device: what an application on a *kernel* initiator sees.

``hactl probe io --device /dev/mapper/mpatha`` writes and verifies the same sequence-numbered, checksummed
blocks as the iSCSI probe, but through the kernel (open-iscsi + dm-multipath: the stand-in for an ESXi host).
Writes use O_DIRECT and block for as long as the kernel holds them: a path failover, a queue_if_no_path
wait, the iSCSI replacement timeout. That wait is the pause the application sees; an EIO is an error it sees.
There is no login and no per-command timeout here: the kernel's timers decide, as they would for a VM.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import struct

from hacontrol.probe.session import ScsiResult

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
CHECK_CONDITION = 0x02


class BlockDevSession:
    """SessionLike over a block device (or a regular file, for tests)."""

    def __init__(self, path: str):
        self.path = path
        self.portal: str | None = None
        self._fd: int | None = None

    @property
    def connected(self) -> bool:
        return self._fd is not None

    def connect(self, portal: str, timeout_s: float) -> None:
        flags = os.O_RDWR | os.O_DIRECT | os.O_SYNC
        self._fd = os.open(self.path, flags)
        self.portal = f"device:{self.path}"

    def close(self, logout_timeout_s: float = 1.0) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _geometry(self) -> tuple[int, int]:
        assert self._fd is not None
        if stat.S_ISBLK(os.fstat(self._fd).st_mode):
            size = struct.unpack("Q", fcntl.ioctl(self._fd, BLKGETSIZE64, b"\0" * 8))[0]
            block = struct.unpack("i", fcntl.ioctl(self._fd, BLKSSZGET, b"\0" * 4))[0]
            return size, block
        return os.fstat(self._fd).st_size, 512

    def read_capacity16(self, timeout_s: float = 5.0) -> ScsiResult:
        size, block = self._geometry()
        data = (size // block - 1).to_bytes(8, "big") + block.to_bytes(4, "big") + bytes(20)
        return ScsiResult(0, None, data)

    def write16(self, lba: int, data: bytes, block_size: int, timeout_s: float = 5.0) -> ScsiResult:
        buf = _aligned(len(data))
        buf[: len(data)] = data
        try:
            os.pwritev(self._fd, [buf], lba * block_size)
        except OSError as exc:
            return _failed(exc)
        finally:
            buf.close()
        return ScsiResult(0)

    def read16(self, lba: int, blocks: int, block_size: int, timeout_s: float = 5.0) -> ScsiResult:
        length = blocks * block_size
        buf = _aligned(length)
        try:
            got = os.preadv(self._fd, [buf], lba * block_size)
            return ScsiResult(0, None, bytes(buf[:got]))
        except OSError as exc:
            return _failed(exc)
        finally:
            buf.close()


def _aligned(length: int) -> mmap.mmap:
    """O_DIRECT wants page-aligned buffers: an anonymous mapping is."""
    return mmap.mmap(-1, max(length, mmap.PAGESIZE))


def _failed(exc: OSError) -> ScsiResult:
    # The kernel does not hand the sense data to the application: an errno is all it sees.
    return ScsiResult(CHECK_CONDITION, None, f"{exc.strerror} ({exc.errno})".encode())

