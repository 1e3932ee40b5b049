"""The probe's engine on a kernel block device (here a file with O_DIRECT): writes, verification, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hacontrol.probe.blockdev import BlockDevSession
from hacontrol.probe.io import IoParams, run_io
from hacontrol.probe.session import Target


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    return path


def test_a_clean_run_on_a_device_verifies_every_write(disk):
    params = IoParams(portals=("device",), target=Target(f"device:{disk}", 0, "iqn.2026-11.org.x:probe"),
                      duration_s=0.5, interval_s=0.01)
    report = run_io(params, session_factory=lambda _t: BlockDevSession(str(disk)))
    assert report.fatal is None and report.writes_acknowledged > 10
    assert report.writes_verified == report.writes_acknowledged and report.writes_lost == 0


def test_an_eio_is_an_application_error(disk, monkeypatch):
    """What a VM sees when the kernel gives up on the paths: EIO, counted as an I/O error, never acknowledged."""
    import errno
    import os

    real = os.pwritev
    calls = {"n": 0}

    def flaky(fd, buffers, offset):
        calls["n"] += 1
        if 20 <= calls["n"] < 25:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", flaky)
    params = IoParams(portals=("device",), target=Target(f"device:{disk}", 0, "iqn.2026-11.org.x:probe"),
                      duration_s=0.6, interval_s=0.01)
    report = run_io(params, session_factory=lambda _t: BlockDevSession(str(disk)))
    assert report.io_errors == 5
    assert report.writes_acknowledged == report.writes_attempted - 5 and report.writes_lost == 0
    session = BlockDevSession(str(disk))
    session.connect("device", 1.0)
    try:
        assert int.from_bytes(session.read_capacity16().data[8:12], "big") == 512
    finally:
        session.close()


def test_the_cli_runs_on_a_device_and_refuses_mixed_arguments(disk):
    out = subprocess.run([sys.executable, "-m", "hacontrol.cli.main", "probe", "io", "--device", str(disk),
                          "--duration", "0.3", "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["writes_lost"] == 0
    mixed = subprocess.run([sys.executable, "-m", "hacontrol.cli.main", "probe", "io", "--device", str(disk),
                            "--portal", "x:3260"], capture_output=True, text=True, timeout=60, check=False)
    assert mixed.returncode == 2 and "--device replaces" in mixed.stderr
