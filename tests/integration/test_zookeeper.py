"""The ZooKeeper adapter against a real 3-member ensemble: leadership, epoch CAS, ownership, lease, ACLs."""

from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from hacontrol.adapters.zookeeper import Coordinator, Session, codec
from hacontrol.adapters.zookeeper.admin import Admin, IntentRefused
from hacontrol.config.schema import Secret, ZooKeeper
from hacontrol.core.model import AluaState, PeerReport, Role, SessionState

pytestmark = pytest.mark.zookeeper


def _session(ensemble, chroot, timeout_s=2.0, *, user=None, password=None, hosts=None) -> Session:
    cfg = ZooKeeper(hosts=tuple(ensemble.connect_string.split(",")), chroot=chroot, username=user,
                    password=None if password is None else Secret(password))
    s = Session(cfg, timeout_s, hosts=hosts)
    s.start(timeout_s=10)
    s.ensure_layout(time.monotonic() + 5)
    return s


def _pair(ensemble, chroot):
    a, b = _session(ensemble, chroot), _session(ensemble, chroot)
    return (a, Coordinator(a, "ctrl-a", "ctrl-b")), (b, Coordinator(b, "ctrl-b", "ctrl-a"))


def _soon() -> float:
    return time.monotonic() + 3.0


def test_exactly_one_claim_wins_and_the_epoch_advances(zk_ensemble, zk_chroot):
    (sa, ca), (sb, cb) = _pair(zk_ensemble, zk_chroot)
    try:
        results = {}
        go = threading.Barrier(2)

        def claim(name, c):
            go.wait()
            results[name] = c.claim(0, _soon())

        threads = [threading.Thread(target=claim, args=("a", ca)), threading.Thread(target=claim, args=("b", cb))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values()) == [False, True]
        winner, loser = (ca, cb) if results["a"] else (cb, ca)
        view_w, view_l = winner.observe(_soon()), loser.observe(_soon())
        assert view_w.epoch == view_l.epoch == 1
        assert view_w.leader.ours and not view_l.leader.ours
        assert view_w.leader.node == winner.node == view_l.leader.node
        assert not loser.claim(1, _soon())  # the znode is taken
        assert not loser.claim(0, _soon())  # stale expectation of the epoch
    finally:
        sa.stop()
        sb.stop()


def test_take_over_deletes_a_live_peers_znode_and_advances_the_epoch_in_one_multi(zk_ensemble, zk_chroot):
    """The fast takeover's claim: the dead peer's session still lives (and still owns /leader); a stale view
    of the epoch or of the leader fails as a whole and changes nothing."""
    (sa, ca), (sb, cb) = _pair(zk_ensemble, zk_chroot)
    try:
        assert ca.claim(0, _soon())
        assert not cb.take_over(0, "ctrl-a", _soon())  # stale epoch: nothing happens
        assert not cb.take_over(1, "ctrl-x", _soon())  # the znode names someone else
        assert ca.observe(_soon()).leader.ours
        assert cb.take_over(1, "ctrl-a", _soon())
        view_a, view_b = ca.observe(_soon()), cb.observe(_soon())
        assert view_b.epoch == 2 and view_b.leader == view_b.leader.__class__("ctrl-b", 2, True)
        assert not view_a.leader.ours and view_a.session is SessionState.CONNECTED  # a's session is untouched
        assert not ca.take_over(1, "ctrl-b", _soon())  # the old leader coming back with its old view fails
        assert not cb.take_over(1, "ctrl-a", _soon())  # and so does a repeat of the same take-over
        assert cb.observe(_soon()).epoch == 2
        sb.client.delete(sb.path(codec.LEADER))  # gone meanwhile (expired, released): an ordinary claim then
        assert ca.take_over(2, "ctrl-b", _soon()) and ca.observe(_soon()).leader.ours
    finally:
        sa.stop()
        sb.stop()


def test_release_only_by_the_owner_and_a_new_claim_gets_a_new_epoch(zk_ensemble, zk_chroot):
    (sa, ca), (sb, cb) = _pair(zk_ensemble, zk_chroot)
    try:
        assert ca.claim(0, _soon())
        assert not cb.release(1, _soon())
        assert ca.observe(_soon()).leader is not None
        assert ca.release(1, _soon())
        assert cb.observe(_soon()).leader is None
        assert cb.claim(1, _soon())
        assert cb.observe(_soon()).leader.epoch == 2
    finally:
        sa.stop()
        sb.stop()


def test_lease_confirmation_is_the_send_time_of_a_synced_read(zk_ensemble, zk_chroot):
    (sa, ca), (sb, _cb) = _pair(zk_ensemble, zk_chroot)
    try:
        before = time.monotonic()
        view = ca.observe(_soon())
        after = time.monotonic()
        assert view.session is SessionState.CONNECTED
        assert before <= view.lease_confirmed_at <= after
        assert view.granted_timeout_s == pytest.approx(2.0, rel=0.05)
    finally:
        sa.stop()
        sb.stop()


def test_server_clamps_a_session_longer_than_its_maximum(zk_ensemble, zk_chroot):
    s = _session(zk_ensemble, zk_chroot, timeout_s=60.0)
    try:
        assert s.negotiated_timeout_s == pytest.approx(20.0, rel=0.05)  # maxSessionTimeout of the test ensemble
    finally:
        s.stop()


def test_ephemerals_vanish_when_the_session_expires(zk_ensemble, zk_chroot):
    (sa, ca), (sb, cb) = _pair(zk_ensemble, zk_chroot)
    try:
        assert ca.claim(0, _soon())
        ca.publish(PeerReport("", Role.ACTIVE, AluaState.ACTIVE_OPTIMIZED, frozenset({"v"}), True, 1), {}, _soon())
        assert cb.observe(_soon()).peer.role is Role.ACTIVE
        # Expire a's session the way kazoo's own test harness does: a second client on the same session closes it.
        sid, passwd = sa.client.client_id
        twin = KazooClient(hosts=zk_ensemble.connect_string, client_id=(sid, passwd), timeout=2)
        twin.start(timeout=5)
        twin.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and cb.observe(_soon()).leader is not None:
            time.sleep(0.05)
        view = cb.observe(_soon())
        assert view.leader is None and view.peer is None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ca.observe(_soon()).session is not SessionState.LOST:
            time.sleep(0.05)
        # the old owner, once it notices, no longer believes it leads
        lost = ca.observe(_soon())
        assert lost.leader is None or not lost.leader.ours
    finally:
        sa.stop()
        sb.stop()


def test_losing_a_follower_or_the_zk_leader_keeps_the_session(zk_ensemble_healthy, zk_chroot):
    ens = zk_ensemble_healthy
    (sa, ca), (sb, _cb) = _pair(ens, zk_chroot)
    try:
        assert ca.claim(0, _soon())
        sid = sa.session_id
        leader = ens.leader()
        ens.stop_member(leader, kill=True)
        ens.wait_for_quorum(20)
        deadline = time.monotonic() + 10
        view = ca.observe(_soon())
        while time.monotonic() < deadline and view.session is not SessionState.CONNECTED:
            time.sleep(0.05)
            view = ca.observe(_soon())
        assert view.session is SessionState.CONNECTED and sa.session_id == sid
        assert view.leader is not None and view.leader.ours
    finally:
        sa.stop()
        sb.stop()


def test_digest_acl_keeps_other_clients_out(zk_ensemble, zk_chroot):
    s = _session(zk_ensemble, zk_chroot, user="hacontrol", password="s3cret-digest")
    intruder = KazooClient(hosts=zk_ensemble.connect_string, timeout=2)
    try:
        Coordinator(s, "ctrl-a", "ctrl-b").claim(0, _soon())
        intruder.start(timeout=5)
        with pytest.raises(NoAuthError):
            intruder.get(f"{zk_chroot}/{codec.EPOCH}")
        with pytest.raises(NoAuthError):
            intruder.delete(f"{zk_chroot}/{codec.LEADER}")
    finally:
        intruder.stop()
        s.stop()


def test_switchover_intent_and_finish(zk_ensemble, zk_chroot):
    (sa, ca), (sb, _cb) = _pair(zk_ensemble, zk_chroot)
    try:
        adm = Admin(sb)
        intent = adm.request_switchover("ctrl-b", 30, "tester")
        with pytest.raises(IntentRefused):
            adm.request_switchover("ctrl-b", 30, "someone else")
        seen = ca.observe(_soon()).switchover
        assert seen.intent_id == intent.intent_id and seen.target == "ctrl-b" and seen.state == "pending"
        assert 29 < seen.deadline - time.monotonic() <= 30
        assert ca.finish_switchover(intent.intent_id, "refused", "peer not ready", _soon())
        assert not ca.finish_switchover(intent.intent_id, "done", "", _soon())  # only once
        assert adm.switchover().state == "refused" and adm.switchover().reason == "peer not ready"
        adm.request_switchover("ctrl-a", 30, "tester")  # a finished intent can be replaced
    finally:
        sa.stop()
        sb.stop()


def test_history_is_bounded(zk_ensemble, zk_chroot, monkeypatch):
    monkeypatch.setattr(codec, "HISTORY_KEEP", 3)
    (sa, ca), (sb, _cb) = _pair(zk_ensemble, zk_chroot)
    try:
        for i in range(5):
            ca.record_history({"kind": "failover", "n": i}, _soon())
        events = Admin(sb).history(10)
        assert [e["n"] for e in events] == [2, 3, 4]
    finally:
        sa.stop()
        sb.stop()


def test_reservations_are_published_under_the_epoch_and_a_deposed_active_cannot_overwrite_them(zk_ensemble,
                                                                                               zk_chroot):
    """The initiators' PR state (prsync.py): the active writes it in a multi guarded by the epoch counter; after
    the peer claimed a new epoch, the old active's write fails whole and changes nothing; the new one reads it."""
    from hacontrol.agent.protocols import AdapterError

    (sa, ca), (sb, cb) = _pair(zk_ensemble, zk_chroot)
    try:
        assert ca.claim(0, _soon())
        ca.publish_reservations(1, {"ds1": "PR_REG_START: 0\nsa_res_key=1\nPR_REG_END: 0\n", "ds2": ""}, _soon())
        ca.publish_reservations(1, {"ds1": "No Registrations or Reservations\n"}, _soon())  # an update
        got = cb.read_reservations(_soon())
        assert sorted(got) == ["ds1", "ds2"]
        assert got["ds1"]["aptpl"] == "No Registrations or Reservations\n"
        assert (got["ds1"]["epoch"], got["ds1"]["node"]) == (1, "ctrl-a")
        assert ca.release(1, _soon()) and cb.claim(1, _soon())  # ctrl-b leads under epoch 2
        with pytest.raises(AdapterError, match="epoch 1 is over"):
            ca.publish_reservations(1, {"ds1": "stale"}, _soon())
        assert cb.read_reservations(_soon())["ds1"]["aptpl"] == "No Registrations or Reservations\n"
        cb.publish_reservations(2, {"ds1": "new"}, _soon())
        assert cb.read_reservations(_soon())["ds1"]["node"] == "ctrl-b"
    finally:
        sa.stop()
        sb.stop()
