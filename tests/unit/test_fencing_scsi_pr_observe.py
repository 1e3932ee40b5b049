"""ScsiReservations.observe (what the core reads), its cache, a hung disk, and the wiring into Fencing."""

from __future__ import annotations

import threading
import time

import pytest

from hacontrol.adapters.fencing import Fencing
from hacontrol.adapters.fencing import pr_codec as pr
from hacontrol.adapters.fencing.scsi_pr import PrRefused, ScsiReservations
from hacontrol.core.actions import FenceMode
from hacontrol.core.model import Storage
from tests.unit.test_fencing_pr_model import Clock, controller, fenced, soon, two_luns


@pytest.fixture
def luns():
    return two_luns()


# --- observe -------------------------------------------------------------------------------------


def test_my_key_must_be_on_every_disk(luns):
    a = controller([luns[0]])
    a.register(3, soon())
    assert controller(luns).observe(3).my_key_epoch is None
    assert controller([luns[0]]).observe(3).my_key_epoch == 3


def test_my_key_must_have_the_same_epoch_everywhere(luns):
    controller([luns[0]]).register(3, soon())
    controller([luns[1]]).register(4, soon())
    assert controller(luns).observe(4).my_key_epoch is None


def test_holder_only_when_all_disks_agree(luns):
    controller([luns[0]]).take_over(3, soon())
    controller([luns[1]], node_id=2).take_over(3, soon())
    view = controller(luns).observe(3)
    assert view.holder is None and view.visible


def test_stale_peer_key_anywhere(luns):
    b = controller(luns, node_id=2, cache_s=0)
    b.take_over(2, soon())
    luns[1].pr_out("A", pr.PrOut.REGISTER_AND_IGNORE, 0, 0, pr.pr_key(1, 1))  # a stale writer came back
    seen = b.observe(2)
    assert seen.stale_peer_key and seen.my_key_epoch == 2 and seen.holder == ("ctrl-b", 2)
    assert not fenced(seen, "ctrl-b", 2)
    luns[1].pr_out("A", pr.PrOut.REGISTER_AND_IGNORE, 0, 0, pr.pr_key(1, 2))  # now a standby under epoch 2
    assert not b.observe(2).stale_peer_key


def test_foreign_key_counts_as_stale(luns):
    b = controller(luns, node_id=2)
    b.take_over(2, soon())
    luns[0].pr_out("X", pr.PrOut.REGISTER_AND_IGNORE, 0, 0, 0xDEAD_BEEF_0000_0001)
    assert controller(luns, node_id=2).observe(2).stale_peer_key


def test_unreadable_disk(luns):
    controller(luns).take_over(1, soon())
    luns[1].down = True
    assert controller(luns).observe(1) == Storage(pr=True, visible=False)
    assert fenced(controller(luns, require_all=False).observe(1), "ctrl-a", 1)
    luns[0].down = True
    assert controller(luns, require_all=False).observe(1) == Storage(pr=True, visible=False)


def test_cache_reuses_reads_and_expires(luns):
    clock = Clock()
    a, b = controller(luns, clock=clock, cache_s=0.25), controller(luns, node_id=2)
    a.take_over(1, soon())
    counts = [d.transport.commands for d in a.disks]
    assert a.observe(1).my_key_epoch == 1  # served from the take_over read-back: no command
    assert [d.transport.commands for d in a.disks] == counts
    b.take_over(2, soon())
    clock.now += 0.2
    assert a.observe(2).my_key_epoch == 1  # still cached: at most cache_s old
    assert [d.transport.commands for d in a.disks] == counts
    clock.now += 0.05
    seen = a.observe(2)  # expired: read again, the loss shows
    assert seen.my_key_epoch is None and seen.holder == ("ctrl-b", 2)
    assert all(d.transport.commands > c for d, c in zip(a.disks, counts, strict=True))


def test_a_refused_takeover_leaves_no_cache_behind(luns):
    clock = Clock()
    a = controller(luns, clock=clock)
    luns[1].not_ready = True
    with pytest.raises(PrRefused):
        a.take_over(1, soon())
    luns[1].not_ready = False
    assert a.observe(1).visible  # read afresh, not "unreadable" from the failed takeover


def test_a_disk_answering_errors_to_reads_is_not_visible_and_is_cached(luns):
    clock = Clock()
    a = controller(luns, clock=clock)
    luns[1].not_ready = True
    assert a.observe(1) == Storage(pr=True, visible=False)
    assert "NOT READY" in a.last_outcomes[1].error
    count = a.disks[1].transport.commands
    a.observe(1)
    assert a.disks[1].transport.commands == count


def test_register_refreshes_the_cache(luns):
    clock = Clock()
    b = controller(luns, node_id=2, clock=clock)
    assert b.observe(5).my_key_epoch is None
    b.register(5, soon())
    assert b.observe(5).my_key_epoch == 5  # no clock movement needed


def test_hung_disk_costs_the_deadline_once(luns):
    luns[1].hang = threading.Event()
    try:
        a = controller(luns, observe_timeout_s=0.2, cache_s=0)
        start = time.monotonic()
        with pytest.raises(PrRefused, match="/dev/lun2: no answer before the fencing deadline"):
            a.take_over(1, time.monotonic() + 0.3)
        assert time.monotonic() - start < 2.0
        start = time.monotonic()
        seen = a.observe(1)
        assert not seen.visible and time.monotonic() - start < 0.2  # lun2 is still busy: not waited for
        assert "still outstanding" in a.last_outcomes[1].error
    finally:
        luns[1].hang.set()


# --- wiring --------------------------------------------------------------------------------------


def test_fencing_uses_it_as_its_reservations(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    fencing = Fencing("ctrl-a", b, [])
    record = fencing.fence_peer(2, FenceMode.PLANNED, soon())
    assert record.ok and "holds 2/2 disks" in record.detail
    assert fenced(fencing.observe(2), "ctrl-b", 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"node_id": 1, "peer_id": 1}, "also the peer's"), ({"node_id": 0, "peer_id": 2}, "node id 0"),
     ({"node_id": 1, "peer_id": 70000}, "node id 70000"),
     ({"node_id": 1, "peer_id": 2, "reservation_type": "exclusive"}, "reservation type")],
)
def test_bad_construction_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScsiReservations(["/dev/sdb"], timeout_s=1, **kwargs)


def test_no_disks_is_refused():
    with pytest.raises(ValueError, match="at least one shared disk"):
        ScsiReservations([], node_id=1, peer_id=2, timeout_s=1)


class Power:
    def __init__(self, ok: bool):
        self.name, self.ok, self.calls = "power", ok, []

    def fence(self, node: str, epoch: int, deadline: float) -> str:
        self.calls.append((node, epoch))
        if not self.ok:
            from hacontrol.agent.protocols import AdapterError
            raise AdapterError("BMC did not answer")
        return f"{node} off"


def test_confirm_dead_powers_off_first_and_only_then_takes_the_keys(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    power = Power(ok=True)
    record = Fencing("ctrl-a", b, [power]).fence_peer(2, FenceMode.CONFIRM_DEAD, soon())
    assert record.ok and record.power_confirmed and power.calls == [("ctrl-a", 2)]
    assert record.detail.index("power") < record.detail.index("scsi_pr")
    assert fenced(b.observe(2), "ctrl-b", 2)


def test_confirm_dead_without_a_confirmed_power_off_leaves_the_peers_keys_alone(luns):
    """A peer that may still be running keeps its reservation: its kernel would otherwise serve with its
    writes refused (the takeover waits for ZooKeeper instead)."""
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    record = Fencing("ctrl-a", b, [Power(ok=False)]).fence_peer(2, FenceMode.CONFIRM_DEAD, soon())
    assert not record.ok and not record.power_confirmed
    assert fenced(controller(luns).observe(1), "ctrl-a", 1)
