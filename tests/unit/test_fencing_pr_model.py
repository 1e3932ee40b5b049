"""A model of SPC-4 persistent reservations for the scsi_pr tests, and tests that it behaves like one.

``FakeLun`` keeps registrations per I_T nexus, one reservation, the generation counter and pending unit
attentions, and answers the PR IN/OUT subset the adapter uses, plus WRITE (reservation check) - enough to
play two controllers ("A" = node 1 ctrl-a, "B" = node 2 ctrl-b) against each other on two disks. Knobs
make it behave like tgt (no PREEMPT AND ABORT), like an LIO without its pr directory (NOT READY), like a
dead path (TransportError), a hung device, or a buggy one (PREEMPT that removes nothing).
Used by test_fencing_scsi_pr.py and test_fencing_scsi_pr_observe.py.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

from hacontrol.adapters.fencing import pr_codec as pr
from hacontrol.adapters.fencing.pr_transport import ScsiReply, TransportError
from hacontrol.adapters.fencing.scsi_pr import ScsiReservations
from hacontrol.core.model import Storage
from hacontrol.probe.sense import Sense

GOOD, CONFLICT = ScsiReply(0x00), ScsiReply(0x18)
NAMES = {1: "ctrl-a", 2: "ctrl-b"}


def check(key: int, asc: int, ascq: int) -> ScsiReply:
    return ScsiReply(0x02, Sense(key, asc, ascq))


class FakeLun:
    def __init__(self, name: str, preempt_abort: bool = True):
        self.name, self.preempt_abort = name, preempt_abort
        self.regs: dict[str, int] = {}
        self.holder: str | None = None
        self.type: int | None = None
        self.generation = 0
        self.ua: dict[str, Sense] = {}
        self.log: list[tuple[str, str]] = []
        self.down = False  # no answer at all
        self.not_ready = False  # LIO without /etc/rtslib-fb-target/pr
        self.ignore_preempt = False  # a buggy device: PREEMPT answers GOOD and removes nothing
        self.hang: threading.Event | None = None
        self.before: dict[str, Callable[[], None]] = {}  # service action name -> hook run before it

    def transport(self, nexus: str) -> FakeTransport:
        return FakeTransport(self, nexus)

    def execute(self, nexus: str, cdb: bytes, data: bytes | None) -> ScsiReply:
        if nexus in self.ua:
            return ScsiReply(0x02, self.ua.pop(nexus))
        if cdb[0] == 0x8A:
            return GOOD if self.write_allowed(nexus) else CONFLICT
        if self.not_ready:
            return check(0x2, 0x04, 0x00)
        if cdb[0] == 0x5E:
            return self.pr_in(cdb[1] & 0x1F)
        action = pr.PrOut(cdb[1] & 0x1F)
        self.log.append((nexus, action.name))
        if action.name in self.before:
            self.before.pop(action.name)()
        key, sa_key = struct.unpack_from(">QQ", data or bytes(24))
        return self.pr_out(nexus, action, cdb[2] & 0x0F, key, sa_key)

    def write_allowed(self, nexus: str) -> bool:
        return self.holder is None or nexus in self.regs

    def pr_in(self, action: int) -> ScsiReply:
        if action == pr.PrIn.READ_KEYS:
            keys = list(self.regs.values())
            return ScsiReply(0, data=struct.pack(f">II{len(keys)}Q", self.generation, 8 * len(keys), *keys))
        if self.type is None:
            return ScsiReply(0, data=struct.pack(">II", self.generation, 0))
        key = 0 if pr.PrType(self.type).all_registrants else self.regs[self.holder]
        return ScsiReply(0, data=struct.pack(">IIQ4xxBH", self.generation, 16, key, self.type, 0))

    def pr_out(self, nexus: str, action: pr.PrOut, pr_type: int, key: int, sa_key: int) -> ScsiReply:
        if action == pr.PrOut.REGISTER_AND_IGNORE:
            self.regs[nexus] = sa_key
            self.generation += 1
            return GOOD
        if self.regs.get(nexus) != key:
            return CONFLICT
        if action == pr.PrOut.REGISTER:
            if sa_key:
                self.regs[nexus] = sa_key
            else:  # unregister; a registrants-only holder's reservation goes with it
                del self.regs[nexus]
                if self.holder == nexus and not pr.PrType(self.type).all_registrants:
                    self.holder = self.type = None
            self.generation += 1
            return GOOD
        if action == pr.PrOut.RESERVE:
            if self.type is None:
                self.holder, self.type = nexus, pr_type
                return GOOD
            return GOOD if self.holds(nexus) and self.type == pr_type else CONFLICT
        if action == pr.PrOut.RELEASE:
            if self.type is not None and self.holds(nexus):
                if pr_type != self.type:
                    return check(0x5, 0x26, 0x04)
                self.holder = self.type = None
            return GOOD
        if action == pr.PrOut.PREEMPT_AND_ABORT and not self.preempt_abort:
            return check(0x5, 0x24, 0x00)
        return self.preempt(nexus, pr_type, sa_key)

    def holds(self, nexus: str) -> bool:
        return self.type is not None and (pr.PrType(self.type).all_registrants or self.holder == nexus)

    def preempt(self, nexus: str, pr_type: int, sa_key: int) -> ScsiReply:
        victims = [n for n, k in self.regs.items() if k == sa_key and n != nexus]
        if not victims:
            return CONFLICT
        if self.ignore_preempt:
            return GOOD
        if self.holder in victims and not pr.PrType(self.type).all_registrants:
            self.holder, self.type = nexus, pr_type
        for victim in victims:
            del self.regs[victim]
            self.ua[victim] = Sense(0x6, 0x2A, 0x05)
        self.generation += 1
        return GOOD


class FakeTransport:
    def __init__(self, lun: FakeLun, nexus: str):
        self.lun, self.nexus, self.name = lun, nexus, f"/dev/{lun.name}"
        self.commands = 0

    def command(self, cdb, *, data_out=None, data_in_len=0, timeout_s):
        self.commands += 1
        if self.lun.hang is not None:
            self.lun.hang.wait(30)
        if self.lun.down:
            raise TransportError(f"{self.name}: opcode 0x{cdb[0]:02X} got no answer (DID_NO_CONNECT)")
        return self.lun.execute(self.nexus, cdb, data_out)

    def close(self):
        pass

    def write(self) -> ScsiReply:
        """WRITE(16) of one block; the UNIT ATTENTION a preempted nexus gets first is consumed, as hosts do."""
        reply = self.lun.execute(self.nexus, b"\x8a" + bytes(15), bytes(512))
        if reply.sense is not None and reply.sense.key == 0x6:
            reply = self.lun.execute(self.nexus, b"\x8a" + bytes(15), bytes(512))
        return reply


class Clock:
    """A clock the test moves by hand. It starts at the real monotonic time: the adapter bounds each call by
    both the deadline it is given (``soon()``, real time) and its own clock, so the two must agree at the
    start (a fixed start such as 1000.0 fails on a machine up for less than that)."""

    def __init__(self):
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def controller(luns, node_id=1, nexus=None, clock=None, **kwargs) -> ScsiReservations:
    nexus = nexus or ("A" if node_id == 1 else "B")
    kwargs.setdefault("names", NAMES)
    return ScsiReservations([], node_id=node_id, peer_id=3 - node_id, timeout_s=5,
                            transports=[lun.transport(nexus) for lun in luns], clock=clock or time.monotonic,
                            **kwargs)


def soon() -> float:
    return time.monotonic() + 5


def fenced(storage: Storage, node: str, epoch: int) -> bool:
    """What hacontrol.core.decide._fenced asks of the disks."""
    return storage.my_key_epoch == epoch and storage.holder == (node, epoch) and not storage.stale_peer_key



def two_luns() -> list[FakeLun]:
    return [FakeLun("lun1"), FakeLun("lun2")]


# --- the model itself --------------------------------------------------------------------------------


def test_model_preempt_of_the_holder_moves_the_reservation():
    lun = FakeLun("m")
    lun.pr_out("A", pr.PrOut.REGISTER_AND_IGNORE, 0, 0, 11)
    lun.pr_out("B", pr.PrOut.REGISTER_AND_IGNORE, 0, 0, 22)
    assert lun.pr_out("A", pr.PrOut.RESERVE, 5, 11, 0) == GOOD
    assert lun.pr_out("B", pr.PrOut.RESERVE, 5, 22, 0) == CONFLICT
    assert lun.write_allowed("B")  # registrants only: every registrant writes
    assert lun.pr_out("B", pr.PrOut.PREEMPT, 5, 22, 11) == GOOD
    assert lun.holder == "B" and "A" not in lun.regs and not lun.write_allowed("A")
    assert lun.execute("A", b"\x8a" + bytes(15), bytes(512)).sense == Sense(0x6, 0x2A, 0x05)  # UA first


def test_model_refuses_a_preempt_of_an_unknown_key_and_from_an_unregistered_nexus():
    lun = FakeLun("m")
    lun.pr_out("A", pr.PrOut.REGISTER_AND_IGNORE, 0, 0, 11)
    assert lun.pr_out("A", pr.PrOut.PREEMPT, 5, 11, 99) == CONFLICT
    assert lun.pr_out("B", pr.PrOut.PREEMPT, 5, 22, 11) == CONFLICT
