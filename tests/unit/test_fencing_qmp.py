"""The QMP wire protocol as QmpFencer speaks it, against a socketpair standing in for qemu."""

import json
import socket
import time

import pytest

from hacontrol.adapters.fencing.qmp import QmpClosed, QmpFencer, _Session


def test_replies_are_found_among_events():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b'{"QMP": {"version": {}}}\r\n{"event": "STOP", "timestamp": {}}\r\n{"return": {}}\r\n'
                       b'{"error": {"class": "GenericError", "desc": "nope"}}\r\n')
        session = _Session(ours, time.monotonic() + 5, "pair")
        session.greeting()
        assert session.execute("stop") == {}
        with pytest.raises(ValueError, match="cont: GenericError: nope"):
            session.execute("cont")
        sent = [json.loads(line) for line in theirs.recv(4096).splitlines()]
        assert sent == [{"execute": "stop"}, {"execute": "cont"}]


def test_quit_waits_for_the_connection_to_close():
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(b'{"return": {}}\r\n{"event": "SHUTDOWN", "data": {"reason": "host-qmp-quit"}}\r\n')
        theirs.close()
        _Session(ours, time.monotonic() + 5, "pair").quit()  # returns only because the peer closed


def test_silence_is_bounded():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="no answer from pair"):
            _Session(ours, time.monotonic() + 0.2, "pair").greeting()
        assert time.monotonic() - start < 1.0


def test_closed_before_greeting():
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours, pytest.raises(QmpClosed):
        _Session(ours, time.monotonic() + 1, "pair").greeting()


def test_name_and_configuration():
    assert QmpFencer("/run/vms/ctrl-b/qmp.sock", 5).name == "qmp:qmp.sock"
    with pytest.raises(ValueError, match="needs the QMP socket"):
        QmpFencer("", 5)
