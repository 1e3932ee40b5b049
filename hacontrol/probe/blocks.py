"""The probe's on-disk block format and the ledger that decides which acknowledged writes were lost (pure).

Block layout (big-endian), one logical block per write::

    0   8  magic  b"HACPROB1"
    8  16  run id (uuid4 bytes: blocks of an earlier run or another probe never count as ours)
   24   8  sequence number
   32   8  LBA the block was written to (catches misdirected writes)
   40   8  creation time, ns since the epoch (for humans reading a dump)
   48   4  block size
   52   4  format version
   56   n  payload: SHAKE-128 of (run id, sequence number), so every block differs
  -16  16  BLAKE2b-128 of everything before it

Consumer: io.py writes :func:`encode_block` output, reads blocks back and feeds :func:`decode_block` results to
:class:`WriteLedger`, whose summary becomes the report's writes_verified / writes_lost / writes_superseded.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, field

MAGIC = b"HACPROB1"
VERSION = 1
HEADER = struct.Struct(">8s16sQQQII")
CHECKSUM_SIZE = 16
MIN_BLOCK_SIZE = HEADER.size + CHECKSUM_SIZE + 8


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=CHECKSUM_SIZE).digest()


def encode_block(run_id: bytes, seq: int, lba: int, time_ns: int, block_size: int) -> bytes:
    if block_size < MIN_BLOCK_SIZE:
        raise ValueError(f"block size {block_size} is smaller than the probe's minimum {MIN_BLOCK_SIZE}")
    header = HEADER.pack(MAGIC, run_id, seq, lba, time_ns, block_size, VERSION)
    payload_len = block_size - HEADER.size - CHECKSUM_SIZE
    payload = hashlib.shake_128(run_id + seq.to_bytes(8, "big")).digest(payload_len)
    body = header + payload
    return body + _checksum(body)


class BlockState(enum.Enum):
    INTACT = "intact"
    FOREIGN = "foreign"  # not a block of this run: zeros, another run's block, a damaged header
    CORRUPT = "corrupt"  # our header, but the checksum does not match
    MISPLACED = "misplaced"  # intact, but written for another LBA


@dataclass(frozen=True)
class DecodedBlock:
    state: BlockState
    seq: int | None = None
    time_ns: int | None = None


def decode_block(raw: bytes, run_id: bytes, lba: int) -> DecodedBlock:
    if len(raw) < MIN_BLOCK_SIZE:
        return DecodedBlock(BlockState.FOREIGN)
    magic, block_run, seq, block_lba, time_ns, size, _version = HEADER.unpack_from(raw)
    if magic != MAGIC or block_run != run_id or size != len(raw):
        return DecodedBlock(BlockState.FOREIGN)
    if _checksum(raw[:-CHECKSUM_SIZE]) != raw[-CHECKSUM_SIZE:]:
        return DecodedBlock(BlockState.CORRUPT, seq)
    if block_lba != lba:
        return DecodedBlock(BlockState.MISPLACED, seq, time_ns)
    return DecodedBlock(BlockState.INTACT, seq, time_ns)


@dataclass(frozen=True)
class LostWrite:
    seq: int
    index: int  # block index inside the region
    found: str  # what was there instead, for the report


@dataclass
class WriteLedger:
    """What was written where, and which acknowledged writes survived.

    Every acknowledged write ends in exactly one bucket, so acknowledged == verified + superseded + lost:

    * superseded: a later acknowledged write went to the same block (the region wrapped) and no read-back
      had found this one damaged. Its data was overwritten by design, so the final pass cannot check it.
    * verified: the final pass found this write's block intact, or intact with a later write to the same
      block that was attempted but never acknowledged (it may legitimately have landed).
    * lost: anything else: the final pass found other data, an older block, a corrupt block, or could not read
      the block at all; or an in-run read-back had found the block damaged.
    """

    acknowledged: int = 0
    superseded: int = 0
    verified: int = 0
    lost: list[LostWrite] = field(default_factory=list)
    _final: dict[int, int] = field(default_factory=dict)  # index -> seq of the latest acknowledged write
    _newer_unacked: dict[int, set[int]] = field(default_factory=dict)  # index -> later, unacknowledged seqs
    _bad_readback: set[int] = field(default_factory=set)

    def write_acknowledged(self, index: int, seq: int) -> None:
        self.acknowledged += 1
        previous = self._final.get(index)
        if previous is not None:
            if previous in self._bad_readback:
                self.lost.append(LostWrite(previous, index, "read back damaged before it was overwritten"))
            else:
                self.superseded += 1
        self._final[index] = seq
        self._newer_unacked.pop(index, None)

    def write_failed(self, index: int, seq: int) -> None:
        """Attempted and not acknowledged: the target may or may not have stored it."""
        self._newer_unacked.setdefault(index, set()).add(seq)

    def readback_expected(self, index: int) -> int | None:
        """The seq a read of this block must return, or None while a failed write makes the content uncertain."""
        if index in self._newer_unacked:
            return None
        return self._final.get(index)

    def readback_damaged(self, seq: int) -> None:
        self._bad_readback.add(seq)

    def indexes(self) -> list[int]:
        return sorted(set(self._final) | set(self._newer_unacked))

    def verify(self, index: int, block: DecodedBlock | None) -> bool | None:
        """Final pass for one block (None: it could not be read). True/False: verified/lost, None: nothing acked."""
        seq = self._final.pop(index, None)
        newer = self._newer_unacked.pop(index, set())
        if seq is None:
            return None
        found = _describe(block)
        if block is not None and block.state is BlockState.INTACT and seq not in self._bad_readback and (
            block.seq == seq or block.seq in newer
        ):
            self.verified += 1
            return True
        if seq in self._bad_readback and block is not None and block.state is BlockState.INTACT:
            found = "read back damaged during the run"
        self.lost.append(LostWrite(seq, index, found))
        return False

    def unverified(self) -> int:
        """Acknowledged writes still waiting for the final pass (should be 0 after it)."""
        return len(self._final)


def _describe(block: DecodedBlock | None) -> str:
    if block is None:
        return "unreadable"
    if block.state is BlockState.INTACT:
        return f"block of seq {block.seq}"
    if block.seq is not None:
        return f"{block.state.value} block (seq {block.seq})"
    return f"{block.state.value} data"
