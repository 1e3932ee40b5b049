"""The APTPL directory served by the agent (adapters/lio/prstore.py) on the real kernel: a real FUSE mount, files
written with the system calls LIO's own write comes down to (open O_CREAT|O_TRUNC, one write ending with NUL),
and with prsync and a real ZooKeeper ensemble behind it: a write on the serving active returns only once the
state is in ZooKeeper, and fails (so LIO would fail the PR-OUT) when it cannot get there.

Needs root and /dev/fuse (the host kernel's FUSE; LIO itself is only in the VM rig: tests/rig)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hacontrol.adapters.lio import reservations as pr
from hacontrol.adapters.lio.prstore import BASE_SOURCE, PrStore, mounts_at, ours

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                                reason="needs root and /dev/fuse")

TEXT = "PR_REG_START: 0\ninitiator_node=iqn.1998-01.com.vmware:esx01\nsa_res_key=7\nPR_REG_END: 0\n"


def lio_write(path: Path, text: str) -> None:
    """What __core_scsi3_write_aptpl_to_file does: open with O_CREAT|O_TRUNC, one write of the text and its NUL."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode() + b"\0")
    finally:
        os.close(fd)


def unmount_all(path: Path) -> None:
    for _ in range(4):  # whatever a test left mounted there, the base included
        if not mounts_at(str(path)):
            break
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def mountpoint(tmp_path: Path):
    path = tmp_path / "dbroot" / "pr"
    yield path
    unmount_all(path)


def test_a_finished_write_waits_for_its_check_and_fails_when_the_check_refuses(mountpoint, tmp_path):
    seen: list[tuple[str, str]] = []

    def check(name: str, text: str) -> None:
        seen.append((name, text))
        if "refuse" in text:
            raise RuntimeError("ZooKeeper did not take it")

    store = PrStore(mountpoint, tmp_path / "backing", check)
    store.start()
    try:
        stack = mounts_at(str(mountpoint))
        assert stack[0] == ("tmpfs", BASE_SOURCE) and ours(stack[1]) and len(stack) == 2
        lio_write(mountpoint / "aptpl_sn1", TEXT)
        assert seen == [("aptpl_sn1", TEXT)]
        assert (mountpoint / "aptpl_sn1").read_bytes() == TEXT.encode() + b"\0"
        assert store.files() == {"aptpl_sn1": TEXT}
        with pytest.raises(OSError) as refused:
            lio_write(mountpoint / "aptpl_sn1", "refuse\n")
        assert refused.value.errno == errno.EIO
        assert store.files()["aptpl_sn1"] == "refuse\n"  # LIO holds it in memory: the store says so, unpublished
        assert (store.completed, store.refused) == (1, 1)
        big = "x" * 300_000  # written in several requests: checked once, when the last one ends it
        lio_write(mountpoint / "aptpl_sn2", big)
        assert [n for n, _ in seen] == ["aptpl_sn1", "aptpl_sn1", "aptpl_sn2"] and store.files()["aptpl_sn2"] == big
        assert sorted(os.listdir(mountpoint)) == ["aptpl_sn1", "aptpl_sn2"]
        os.rename(mountpoint / "aptpl_sn2", mountpoint / "aptpl_sn3")
        os.unlink(mountpoint / "aptpl_sn3")
        assert sorted(os.listdir(tmp_path / "backing")) == ["aptpl_sn1"]
        with pytest.raises(OSError):
            os.mkdir(mountpoint / "sub")
    finally:
        store.stop()
    assert mounts_at(str(mountpoint)) == [("tmpfs", BASE_SOURCE)]
    with pytest.raises(OSError) as base:  # nobody serves it: LIO's write fails, no PR-OUT is acknowledged
        lio_write(mountpoint / "aptpl_sn1", TEXT)
    assert base.value.errno == errno.EROFS


SERVER = """
import sys, time
from pathlib import Path
from hacontrol.adapters.lio.prstore import PrStore
PrStore(Path(sys.argv[1]), Path(sys.argv[2])).start()
print("serving", flush=True)
time.sleep(120)
"""


def test_a_killed_agents_directory_fails_writes_until_the_next_agent_serves_what_it_kept(mountpoint, tmp_path):
    backing = tmp_path / "backing"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(mountpoint), str(backing)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(2)]  # its log line, then ours
        assert "serving" in lines, lines
        lio_write(mountpoint / "aptpl_sn1", TEXT)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with pytest.raises(OSError) as dead:
        lio_write(mountpoint / "aptpl_sn1", TEXT + "more\n")
    assert dead.value.errno == errno.ENOTCONN
    store = PrStore(mountpoint, backing)
    store.start()  # detaches the dead mount, serves the copy the dead agent kept under /run
    try:
        stack = mounts_at(str(mountpoint))
        assert stack[0] == ("tmpfs", BASE_SOURCE) and ours(stack[1]) and len(stack) == 2
        assert store.files() == {"aptpl_sn1": TEXT}
        assert (mountpoint / "aptpl_sn1").read_text().rstrip("\0") == TEXT
    finally:
        store.stop()


def test_on_the_serving_active_a_pr_out_completes_only_once_zookeeper_holds_it(tmp_path, zk_ensemble, zk_chroot):
    """prsync on a fake LIO tree (tests/unit) whose dbroot is this FUSE mount, and a real ensemble: a standby's
    write stays here; after load (the takeover) a write is in ZooKeeper when it returns; a deposed active's
    write fails with EIO and leaves ZooKeeper as the new active wrote it."""
    from hacontrol.core.model import AluaState
    from tests.integration.test_zookeeper import _pair, _soon
    from tests.unit.test_lio_fake import SN, FakeLio, lio_config, make_devices
    from tests.unit.test_lio_port import make

    lio = FakeLio(tmp_path / "lio")
    port = make(lio, lio_config(make_devices(tmp_path)))
    (lio.root.parent / "dbroot").mkdir(exist_ok=True)
    (sa, ca), (sb, cb) = _pair(zk_ensemble, zk_chroot)
    store = None
    try:
        port.configure(_soon())
        store = port.serve_reservation_files(ca.publish_reservations, 2.0, tmp_path / "backing")
        served = pr.aptpl_dir(lio.root)
        lio_write(served / f"aptpl_{SN[0]}", TEXT)  # a standby: kept here only
        assert cb.read_reservations(_soon()) == {}
        assert ca.claim(0, _soon())
        port.load_reservations(1, {}, False, _soon())
        port.set_alua(AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY, _soon())
        second = TEXT.replace("sa_res_key=7", "sa_res_key=9")
        lio_write(served / f"aptpl_{SN[0]}", second)
        assert cb.read_reservations(_soon())["ds01"]["aptpl"] == second  # there when the write returned
        assert not port.observe().pr_unpublished
        assert ca.release(1, _soon()) and cb.claim(1, _soon())  # deposed: ctrl-b leads under epoch 2
        with pytest.raises(OSError) as refused:
            lio_write(served / f"aptpl_{SN[0]}", TEXT)
        assert refused.value.errno == errno.EIO
        assert cb.read_reservations(_soon())["ds01"]["aptpl"] == second
        port.set_alua(AluaState.STANDBY, AluaState.STANDBY, _soon())
        lio_write(served / f"aptpl_{SN[0]}", TEXT)  # stepped down: a standby's write again, kept here
        assert port.prsync.report()["synchronous"] is False
    finally:
        if store is not None:
            store.stop()
        unmount_all(pr.aptpl_dir(lio.root))
        sa.stop()
        sb.stop()
