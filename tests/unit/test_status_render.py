"""hactl status text: who hosts which ports after a port takeover, and why a controller's last plan stopped."""

from __future__ import annotations

from hacontrol.cli.status import render


def _node(name: str, role: str, **kw) -> dict:
    return {"node": name, "role": role, "is_leader": role == "active", "alua": "standby", "vips": [], "ready": True,
            "session": "0x1", "last_seen_s": 0.5, "reason": role, "frozen_actions": [], "capacity": [],
            "config": {"error": "", "restart_pending": False}, "hosts_peer_ports": False, "last_error": "", **kw}


def _doc(*nodes: dict) -> dict:
    return {"cluster": "c", "epoch": 4, "leader": None, "nodes": list(nodes), "switchover": None,
            "maintenance": {"enabled": False, "reason": "", "by": ""},
            "automatic_failover": {"possible": False, "why_not": ["ctrl-a is powered off"]}}


def test_status_names_the_controller_that_hosts_the_peers_port():
    text = render(_doc(_node("ctrl-a", "no session", ready=None), _node("ctrl-b", "active", hosts_peer_ports=True)))
    assert "ports: ctrl-b hosts its own port and ctrl-a's" in text
    assert "ports:" not in render(_doc(_node("ctrl-a", "standby"), _node("ctrl-b", "active")))


def test_status_shows_the_step_that_keeps_failing():
    text = render(_doc(_node("ctrl-a", "standby", ready=False, last_error="ConfigureTarget: lun[0] thin: no discard"),
                       _node("ctrl-b", "active")))
    assert "ctrl-a last failed step: ConfigureTarget: lun[0] thin: no discard" in text


def test_status_shows_the_luns_with_guest_reservations_and_what_would_not_survive_a_failover():
    held = {"lun": "rdm0", "registrations": 2, "generation": 3, "keys": ["0xa1", "0xb2"],
            "holder": {"initiator": "iqn.1998-01.com.vmware:esx01", "isid": "", "type": "WERO", "rtpi": 1,
                       "all_target_ports": False}}
    only = {"lun": "rdm1", "registrations": 1, "generation": 1, "keys": ["0xa1"], "holder": None}
    sync = {"loaded_epoch": 4, "unpublished": ["rdm1"], "not_loaded": {}, "untracked": ["old0"]}
    failed = {"loaded_epoch": 3, "unpublished": [], "not_loaded": {"rdm0": "OSError: EINVAL"}, "untracked": []}
    text = render(_doc(_node("ctrl-a", "active", reservations=[held, only], reservations_sync=sync),
                       _node("ctrl-b", "standby", reservations_sync=failed)))
    assert "guest reservations: ctrl-a LUN rdm0: 2 registrations, WERO held by iqn.1998-01.com.vmware:esx01\n" in text
    assert "guest reservations: ctrl-a LUN rdm1: 1 registration, no reservation (not in ZooKeeper yet)" in text
    assert "guest reservations NOT carried over: ctrl-b LUN rdm0: OSError: EINVAL" in text
    assert "guest reservations stay on ctrl-a (lost on a failover) for LUN old0" in text
    assert "read every tick" not in text  # no "served" key: an agent from before the served directory
    assert "guest reservations" not in render(_doc(_node("ctrl-a", "active"), _node("ctrl-b", "standby")))
    unserved = render(_doc(_node("ctrl-a", "active", reservations_sync=sync | {"served": False}),
                           _node("ctrl-b", "standby", reservations_sync=failed | {"served": False})))
    assert "guest reservations on ctrl-a are read every tick, not served (FUSE unavailable" in unserved
    assert "guest reservations on ctrl-b are read" not in unserved  # a standby acknowledges nothing for ZooKeeper
