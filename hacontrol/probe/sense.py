"""SCSI status and sense data, decoded to names (pure: no I/O).

Consumers: session.py (builds a :class:`Sense` from libiscsi's parsed ``struct scsi_sense``, or from the raw
sense bytes), io.py (classifies errors: a UNIT ATTENTION is retried, everything else is an application error)
and report.py (names in the JSON). Only the conditions a failover produces, plus the usual suspects, get names;
anything else is printed as hex.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUS_NAMES: dict[int, str] = {
    0x00: "GOOD",
    0x02: "CHECK CONDITION",
    0x04: "CONDITION MET",
    0x08: "BUSY",
    0x18: "RESERVATION CONFLICT",
    0x28: "TASK SET FULL",
    0x30: "ACA ACTIVE",
    0x40: "TASK ABORTED",
}

KEY_NAMES: dict[int, str] = {
    0x0: "NO SENSE",
    0x1: "RECOVERED ERROR",
    0x2: "NOT READY",
    0x3: "MEDIUM ERROR",
    0x4: "HARDWARE ERROR",
    0x5: "ILLEGAL REQUEST",
    0x6: "UNIT ATTENTION",
    0x7: "DATA PROTECT",
    0x8: "BLANK CHECK",
    0x9: "VENDOR SPECIFIC",
    0xA: "COPY ABORTED",
    0xB: "ABORTED COMMAND",
    0xD: "VOLUME OVERFLOW",
    0xE: "MISCOMPARE",
}

UNIT_ATTENTION = 0x6

# (ASC, ASCQ) -> SPC-4 text. The failover-relevant ones first.
ASC_NAMES: dict[tuple[int, int], str] = {
    (0x04, 0x0A): "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION",
    (0x04, 0x0B): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE",
    (0x04, 0x0C): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE",
    (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
    (0x29, 0x01): "POWER ON OCCURRED",
    (0x29, 0x02): "SCSI BUS RESET OCCURRED",
    (0x29, 0x03): "BUS DEVICE RESET FUNCTION OCCURRED",
    (0x29, 0x04): "DEVICE INTERNAL RESET",
    (0x29, 0x07): "I_T NEXUS LOSS OCCURRED",
    (0x2A, 0x01): "MODE PARAMETERS CHANGED",
    (0x2A, 0x03): "RESERVATIONS PREEMPTED",
    (0x2A, 0x04): "RESERVATIONS RELEASED",
    (0x2A, 0x05): "REGISTRATIONS PREEMPTED",
    (0x2A, 0x06): "ASYMMETRIC ACCESS STATE CHANGED",
    (0x2A, 0x07): "IMPLICIT ASYMMETRIC ACCESS STATE TRANSITION FAILED",
    (0x2A, 0x09): "CAPACITY DATA HAS CHANGED",
    (0x27, 0x00): "WRITE PROTECTED",
    (0x27, 0x07): "SPACE ALLOCATION FAILED WRITE PROTECT",
    (0x25, 0x00): "LOGICAL UNIT NOT SUPPORTED",
    (0x21, 0x00): "LOGICAL BLOCK ADDRESS OUT OF RANGE",
    (0x20, 0x00): "INVALID COMMAND OPERATION CODE",
    (0x24, 0x00): "INVALID FIELD IN CDB",
    (0x26, 0x00): "INVALID FIELD IN PARAMETER LIST",
    (0x04, 0x00): "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE",
    (0x04, 0x01): "LOGICAL UNIT IS IN PROCESS OF BECOMING READY",
    (0x04, 0x02): "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED",
    (0x04, 0x03): "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED",
    (0x08, 0x00): "LOGICAL UNIT COMMUNICATION FAILURE",
    (0x0E, 0x03): "INVALID FIELD IN COMMAND INFORMATION UNIT",
    (0x11, 0x00): "UNRECOVERED READ ERROR",
    (0x1D, 0x00): "MISCOMPARE DURING VERIFY OPERATION",
    (0x38, 0x07): "THIN PROVISIONING SOFT THRESHOLD REACHED",
    (0x3A, 0x00): "MEDIUM NOT PRESENT",
    (0x3F, 0x03): "INQUIRY DATA HAS CHANGED",
    (0x3F, 0x0E): "REPORTED LUNS DATA HAS CHANGED",
    (0x44, 0x00): "INTERNAL TARGET FAILURE",
    (0x47, 0x00): "SCSI PARITY ERROR",
    (0x4B, 0x00): "DATA PHASE ERROR",
    (0x55, 0x03): "INSUFFICIENT RESOURCES",
}

# Sense data response codes (SPC-4 4.5.1).
FIXED_CURRENT, FIXED_DEFERRED, DESCRIPTOR_CURRENT, DESCRIPTOR_DEFERRED = 0x70, 0x71, 0x72, 0x73


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"STATUS 0x{status:02X}")


@dataclass(frozen=True)
class Sense:
    key: int
    asc: int
    ascq: int
    deferred: bool = False

    @property
    def key_name(self) -> str:
        return KEY_NAMES.get(self.key, f"SENSE KEY 0x{self.key:X}")

    @property
    def asc_name(self) -> str:
        return ASC_NAMES.get((self.asc, self.ascq), f"ASC 0x{self.asc:02X} ASCQ 0x{self.ascq:02X}")

    @property
    def code(self) -> str:
        """The usual shorthand, e.g. ``02/04/0A``."""
        return f"{self.key:02X}/{self.asc:02X}/{self.ascq:02X}"

    def describe(self) -> str:
        deferred = " (deferred)" if self.deferred else ""
        return f"{self.key_name} {self.code}: {self.asc_name}{deferred}"

    def is_unit_attention(self) -> bool:
        return self.key == UNIT_ATTENTION

    def is_alua_path_state(self) -> bool:
        """NOT READY 04/0A (transitioning), 04/0B (standby), 04/0C (unavailable): this path, not the LU.

        An ALUA initiator (ESXi's VMW_SATP_ALUA, Linux's scsi_dh_alua) answers by using another path,
        or by retrying while the state is transitioning; the application never sees it."""
        return self.key == 0x02 and self.asc == 0x04 and self.ascq in (0x0A, 0x0B, 0x0C)


def parse_sense(raw: bytes) -> Sense | None:
    """Fixed (0x70/0x71) or descriptor (0x72/0x73) sense data; None for anything else or too short."""
    if len(raw) < 4:
        return None
    code = raw[0] & 0x7F
    if code in (FIXED_CURRENT, FIXED_DEFERRED):
        # A fixed-format header may be truncated before ASC/ASCQ (ADDITIONAL SENSE LENGTH < 6): key only.
        asc = raw[12] if len(raw) > 12 else 0
        ascq = raw[13] if len(raw) > 13 else 0
        return Sense(raw[2] & 0x0F, asc, ascq, deferred=code == FIXED_DEFERRED)
    if code in (DESCRIPTOR_CURRENT, DESCRIPTOR_DEFERRED):
        return Sense(raw[1] & 0x0F, raw[2], raw[3], deferred=code == DESCRIPTOR_DEFERRED)
    return None


def condition(status: int, sense: Sense | None) -> str:
    """One label per distinct SCSI outcome, used as a counting key in the report."""
    if sense is not None:
        return f"{status_name(status)} {sense.describe()}"
    return status_name(status)
