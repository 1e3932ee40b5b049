"""QmpFencer against real qemu processes (no guest image: ``-machine none``; QMP on a unix or loopback socket).

Each test starts its own qemu (``-nodefaults -display none``, no network), fences it, and checks that the
process is gone; every qemu is SIGKILLed by PID in teardown if it is still there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hacontrol.adapters.fencing.qmp import QmpFencer
from hacontrol.agent.protocols import AdapterError

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64 (Debian qemu-system-x86)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable(where: str) -> bool:
    try:
        if where.startswith("tcp:"):
            host, _, port = where[4:].rpartition(":")
            socket.create_connection((host, int(port)), timeout=0.5).close()
        else:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(where)
    except OSError:
        return False
    return True


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, str]]]:
    started: list[subprocess.Popen] = []

    def start(tcp: bool = False) -> tuple[subprocess.Popen, str]:
        where = f"tcp:127.0.0.1:{_free_port()}" if tcp else str(tmp_path / f"qmp-{len(started)}.sock")
        spec = f"{where},server=on,wait=off" if tcp else f"unix:{where},server=on,wait=off"
        log = (tmp_path / f"qemu-{len(started)}.log").open("ab")
        proc = subprocess.Popen([QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-qmp", spec],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        started.append(proc)
        for _ in range(200):  # bounded: qemu -machine none is up in well under a second
            if proc.poll() is not None:
                pytest.fail(f"qemu exited {proc.returncode}: {(tmp_path / f'qemu-{len(started) - 1}.log').read_text()}")
            if _reachable(where):
                return proc, where
            time.sleep(0.05)
        pytest.fail("qemu's QMP socket never came up")

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp-loopback"])
def test_fence_stops_and_ends_qemu(qemu, tcp):
    proc, where = qemu(tcp=tcp)
    detail = QmpFencer(where, timeout_s=10).fence("ctrl-b", 4, time.monotonic() + 10)
    assert detail.startswith("ctrl-b off (vCPUs stopped at") and "qemu gone at" in detail
    assert proc.wait(timeout=10) == 0  # quit: a clean exit of the process, not of the guest
    assert not _reachable(where)


def test_a_hung_qemu_is_not_confirmed_off_and_the_deadline_holds(qemu):
    proc, where = qemu()
    os.kill(proc.pid, signal.SIGSTOP)  # qemu itself frozen: the kernel accepts, nobody answers
    start = time.monotonic()
    with pytest.raises(AdapterError, match=r"qmp:qmp-0.sock: QMP with ctrl-b failed: no answer"):
        QmpFencer(where, timeout_s=1.0).fence("ctrl-b", 4, time.monotonic() + 10)
    assert time.monotonic() - start < 3.0
    assert proc.poll() is None


def test_missing_socket_is_an_error_not_already_off(tmp_path):
    with pytest.raises(AdapterError, match=r"cannot reach the QMP socket .*nope.sock of ctrl-b .*check the path"):
        QmpFencer(str(tmp_path / "nope.sock"), timeout_s=1.0).fence("ctrl-b", 4, time.monotonic() + 5)

