"""ScsiReservations take_over / register against the SPC-4 model: order, fallback, read-back, races, require_all."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from hacontrol.adapters.fencing import pr_codec as pr
from hacontrol.adapters.fencing.scsi_pr import DiskOutcome, PrRefused, judge
from hacontrol.core.model import Storage
from hacontrol.probe.sense import Sense
from tests.unit.test_fencing_pr_model import FakeLun, controller, fenced, soon, two_luns


@pytest.fixture
def luns():
    return two_luns()


# --- take_over / register ------------------------------------------------------------------------


def test_take_over_on_fresh_disks(luns):
    a = controller(luns)
    result = a.take_over(1, soon())
    for lun in luns:
        assert lun.regs == {"A": pr.pr_key(1, 1)} and lun.holder == "A" and lun.type == 5
    assert result.startswith("key 0x100000001 holds 2/2 disks")
    assert fenced(a.observe(1), "ctrl-a", 1)


def test_standby_registers_and_never_reserves_or_preempts(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    b.register(1, soon())
    for lun in luns:
        assert lun.regs == {"A": pr.pr_key(1, 1), "B": pr.pr_key(2, 1)} and lun.holder == "A"
        assert [action for nexus, action in lun.log if nexus == "B"] == ["REGISTER_AND_IGNORE"]
    assert b.observe(1) == Storage(pr=True, visible=True, my_key_epoch=1, holder=("ctrl-a", 1))


def test_take_over_fences_the_old_holder(luns):
    a, b = controller(luns, cache_s=0), controller(luns, node_id=2)
    a.take_over(1, soon())
    b.register(1, soon())
    result = b.take_over(2, soon())
    for lun in luns:
        assert lun.regs == {"B": pr.pr_key(2, 2)} and lun.holder == "B"
        assert ("B", "PREEMPT_AND_ABORT") in lun.log and ("B", "PREEMPT") not in lun.log
    assert "PREEMPT AND ABORT 0x100000001" in result
    assert all(t.write().status == 0x18 for t in (lun.transport("A") for lun in luns))
    seen_by_a = a.observe(2)  # its first command meets the UNIT ATTENTION and is retried
    assert seen_by_a.my_key_epoch is None and seen_by_a.holder == ("ctrl-b", 2) and seen_by_a.visible
    assert fenced(b.observe(2), "ctrl-b", 2)


def test_old_active_re_registers_as_standby_without_preempting(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    b.take_over(2, soon())
    a.register(2, soon())
    for lun in luns:
        assert lun.holder == "B" and sorted(lun.regs.values()) == [pr.pr_key(1, 2), pr.pr_key(2, 2)]
        assert not [action for nexus, action in lun.log[2:] if nexus == "A" and "PREEMPT" in action]
    assert fenced(b.observe(2), "ctrl-b", 2)  # a peer key under the current epoch is not stale


def test_preempt_and_abort_unsupported_falls_back_once_per_disk():
    luns = [FakeLun("lun1", preempt_abort=False), FakeLun("lun2", preempt_abort=False)]
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    with capture_logs() as logs:
        result = b.take_over(2, soon())
    assert "PREEMPT 0x100000001" in result
    warned = [e for e in logs if e["event"] == "pr_preempt_abort_unsupported"]
    assert len(warned) == 2 and "05/24/00" in warned[0]["answer"]
    a.register(2, soon())
    b.take_over(3, soon())  # remembered: no second PREEMPT AND ABORT attempt
    for lun in luns:
        assert [act for n, act in lun.log if n == "B" and act.startswith("PREEMPT")] == \
            ["PREEMPT_AND_ABORT", "PREEMPT", "PREEMPT"]
        assert lun.regs == {"B": pr.pr_key(2, 3)}


def test_other_preempt_errors_are_not_mistaken_for_unsupported(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    for lun in luns:
        lun.before["PREEMPT_AND_ABORT"] = lambda lun=lun: setattr(lun, "not_ready", True)
    with pytest.raises(PrRefused, match=r"NOT READY.*rtslib-fb-target/pr"):
        b.take_over(2, soon())


def test_reads_back_and_refuses_a_device_that_did_not_preempt(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    luns[1].ignore_preempt = True
    with pytest.raises(PrRefused, match=r"/dev/lun2: after PREEMPT the reservation is still held by "
                                        r"0x0000000100000001 \(node 1, epoch 1\)"):
        b.take_over(2, soon())
    luns[1].holder = luns[1].type = None  # no reservation in the way: RESERVE works, the read-back catches it
    with pytest.raises(PrRefused, match=r"/dev/lun2: read-back after takeover: still registered: "
                                        r"0x0000000100000001 \(node 1, epoch 1\)"):
        b.take_over(3, soon())


def test_standby_registering_during_the_takeover_is_accepted(luns):
    b = controller(luns, node_id=2)
    # A learns that B leads under epoch 2 and registers while B is still fencing
    luns[0].before["RESERVE"] = lambda: luns[0].pr_out("A", pr.PrOut.REGISTER_AND_IGNORE, 0, 0, pr.pr_key(1, 2))
    b.take_over(2, soon())
    assert sorted(luns[0].regs.values()) == [pr.pr_key(1, 2), pr.pr_key(2, 2)] and luns[0].holder == "B"


def test_a_stale_registration_during_the_takeover_is_not(luns):
    b = controller(luns, node_id=2)
    luns[0].before["RESERVE"] = lambda: luns[0].pr_out("A", pr.PrOut.REGISTER_AND_IGNORE, 0, 0, pr.pr_key(1, 1))
    with pytest.raises(PrRefused, match="still registered: 0x0000000100000001"):
        b.take_over(2, soon())


def test_old_holder_re_registering_before_the_preempt_is_preempted_again(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    # A demotes and registers as standby under epoch 2 between B's READ KEYS and B's PREEMPT: A's nexus
    # keeps the reservation under its new key, so preempting the old key alone would leave A holding it.
    luns[0].before["PREEMPT_AND_ABORT"] = lambda: luns[0].pr_out("A", pr.PrOut.REGISTER_AND_IGNORE, 0, 0,
                                                                 pr.pr_key(1, 2))
    result = b.take_over(2, soon())
    assert luns[0].holder == "B" and luns[0].regs == {"B": pr.pr_key(2, 2)}
    assert "already gone" in result or "0x100000002" in result


def test_being_preempted_during_the_takeover_fails_it(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    a.take_over(1, soon())
    b.register(1, soon())
    # the old active, resumed after a freeze, preempts B just before B's own PREEMPT reaches lun1
    luns[0].before["PREEMPT_AND_ABORT"] = lambda: luns[0].preempt("A", 5, luns[0].regs["B"])
    with pytest.raises(PrRefused, match=r"our key .* was removed meanwhile"):
        b.take_over(2, soon())


def test_victim_gone_before_the_preempt_is_fine(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    b.register(1, soon())
    a.take_over(1, soon())  # will preempt B's registration ...
    b.register(1, soon())
    luns[0].before["PREEMPT_AND_ABORT"] = lambda: luns[0].regs.pop("B")  # ... which B drops meanwhile
    assert "already gone" in a.take_over(2, soon())


def test_a_stale_controller_cannot_take_over_or_register(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    b.take_over(2, soon())
    before = [dict(lun.regs) for lun in luns]
    with pytest.raises(PrRefused, match=r"0x0000000200000002 \(node 2, epoch 2\) is registered under a newer "
                                        r"epoch than 1: this controller's leadership is stale"):
        a.take_over(1, soon())
    with pytest.raises(PrRefused, match="newer epoch than 1"):
        a.register(1, soon())
    assert [dict(lun.regs) for lun in luns] == before  # no trace left: no stale key for B to trip over
    assert not [act for lun in luns for nexus, act in lun.log if nexus == "A"]


def test_a_takeover_frozen_after_registering_is_refused_when_it_resumes(luns):
    a, b = controller(luns), controller(luns, node_id=2)
    b.register(1, soon())
    # A freezes right after its REGISTER on lun1; meanwhile B wins epoch 2 and fences everything
    luns[0].before["REGISTER_AND_IGNORE"] = lambda: luns[0].before.update(
        {"REGISTER_AND_IGNORE": lambda: None}) or b.take_over(2, soon())
    with pytest.raises(PrRefused, match="newer epoch than 1"):
        a.take_over(1, soon())
    assert luns[0].holder == "B" and luns[0].regs == {"B": pr.pr_key(2, 2)}  # A withdrew its late key
    assert not [act for nexus, act in luns[0].log if nexus == "A" and "PREEMPT" in act]
    assert fenced(controller(luns, node_id=2).observe(2), "ctrl-b", 2)


def test_holder_switches_type_by_release_and_reserve(luns):
    controller(luns).take_over(1, soon())
    a7 = controller(luns, reservation_type="write_exclusive_all_registrants")
    a7.take_over(2, soon())
    assert all(lun.type == 7 for lun in luns)
    assert [act for _, act in luns[0].log[-3:]] == ["REGISTER_AND_IGNORE", "RELEASE", "RESERVE"]
    assert fenced(a7.observe(2), "ctrl-a", 2)  # all-registrants: we hold it because we are registered


def test_all_registrants_holder_seen_from_an_unregistered_peer(luns):
    controller(luns, reservation_type=7).take_over(4, soon())
    b = controller(luns, node_id=2, reservation_type=7)
    assert b.observe(4) == Storage(pr=True, visible=True, my_key_epoch=None, holder=("ctrl-a", 4))


def test_unit_attention_is_retried_but_not_forever(luns):
    a = controller(luns)

    class Sticky(dict):
        def __contains__(self, nexus):
            return True

        def pop(self, nexus, *default):
            return Sense(0x6, 0x29, 0x00)

    luns[1].ua = Sticky()
    with pytest.raises(PrRefused, match=r"lun2: READ KEYS answered .*UNIT ATTENTION"):
        a.take_over(1, soon())


# --- require_all ---------------------------------------------------------------------------------


def test_unreachable_disk_blocks_when_all_are_required(luns):
    luns[1].down = True
    with pytest.raises(PrRefused) as caught:
        controller(luns).take_over(1, soon())
    message = str(caught.value)
    assert "/dev/lun2" in message and "DID_NO_CONNECT" in message and "require_all_disks = true" in message


def test_unreachable_disk_is_skipped_when_not_required(luns):
    luns[1].down = True
    a = controller(luns, require_all=False)
    result = a.take_over(1, soon())
    assert "holds 1/2 disks" in result and "unreachable, skipped: /dev/lun2" in result
    assert fenced(a.observe(1), "ctrl-a", 1)


@pytest.mark.parametrize("require_all", [True, False])
def test_a_disk_that_answers_must_be_fenced_either_way(luns, require_all):
    luns[1].not_ready = True
    with pytest.raises(PrRefused, match=r"/dev/lun2: READ KEYS answered .*NOT READY"):
        controller(luns, require_all=require_all).take_over(1, soon())


def test_no_disk_at_all_fails_even_when_not_all_required(luns):
    for lun in luns:
        lun.down = True
    with pytest.raises(PrRefused, match="no disk could be fenced"):
        controller(luns, require_all=False).take_over(1, soon())


def test_register_follows_the_same_rule(luns):
    luns[0].down = True
    controller(luns, node_id=2, require_all=False).register(1, soon())
    assert luns[1].regs == {"B": pr.pr_key(2, 1)}
    with pytest.raises(PrRefused, match="/dev/lun1"):
        controller(luns, node_id=2).register(1, soon())


@pytest.mark.parametrize(
    ("outcomes", "require_all", "verdict"),
    [
        ([DiskOutcome("d1"), DiskOutcome("d2")], True, ""),
        ([DiskOutcome("d1"), DiskOutcome("d2", error="d2: down", reachable=False)], True, "d2: down (require_all"),
        ([DiskOutcome("d1"), DiskOutcome("d2", error="d2: down", reachable=False)], False, ""),
        ([DiskOutcome("d1"), DiskOutcome("d2", error="d2: conflict")], False, "d2: conflict"),
        ([DiskOutcome("d1", error="d1: down", reachable=False)], False, "no disk could be fenced: d1: down"),
    ],
)
def test_judge(outcomes, require_all, verdict):
    assert judge(outcomes, require_all).startswith(verdict) and bool(judge(outcomes, require_all)) == bool(verdict)


