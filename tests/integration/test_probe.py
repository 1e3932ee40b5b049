"""``probe io`` and the probe Session against a real tgtd, inside network namespaces.

Layout: one Topology per module (tgt-a 10.77.0.1, client 10.77.0.2, tgt-b 10.77.0.3). Each test starts its own
tgtd (``ip netns exec NS tgtd -f``, its own control port, configured with tgtadm directly) on a sparse backing
file in tmp_path; LUN 1 is the disk (LUN 0 is tgt's controller). The probe runs *inside* the client namespace:
``probe io`` as a subprocess under ``ip netns exec`` (so the CLI, its JSON and its exit code are what is
tested), Session-level checks in a forked child that entered the namespace with setns(2).

Every tgtd and probe is ended by PID in a finalizer; the namespaces go with the module. Waits are bounded
(they fail the test when an expected event never comes) and nothing asserts on durations.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hacontrol.lab.netns import Topology
from hacontrol.probe import libiscsi
from hacontrol.probe.sense import Sense, parse_sense
from hacontrol.probe.session import Session, Target, cdb_inquiry, cdb_write16, parse_capacity16

pytestmark = [pytest.mark.tgt, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]
IQN = "iqn.2024-01.org.hacontrol:probe-test"
INITIATOR = "iqn.2024-01.org.hacontrol:probe-client"
LUN_BYTES = 16 << 20
TGTD_RUN_DIR = Path("/run/tgtd")
WAIT_S = 60.0  # upper bound for any awaited event; a healthy run needs a fraction of it


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("tgtd", "tgtadm", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    try:
        libiscsi.load()
    except libiscsi.LibiscsiMissing:
        return "needs libiscsi"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


class Tgtd:
    """One tgtd inside a namespace on its own control port; ended by PID."""

    def __init__(self, netns: str, address: str, log: Path) -> None:
        self.netns, self.address, self.log = netns, address, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctl = 0

    @property
    def portal(self) -> str:
        return f"{self.address}:3260"

    def start(self) -> Tgtd:
        for _ in range(5):
            port = 20000 + secrets.randbelow(12000)  # tgtd refuses control ports above 32767
            if (TGTD_RUN_DIR / f"socket.{port}").exists():
                continue  # another tgtd's (or a stale) control socket: never talk to someone else's daemon
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    ["ip", "netns", "exec", self.netns, "tgtd", "-f", "--iscsi", f"portal={self.portal}",
                     "-C", str(port)], stdout=log, stderr=subprocess.STDOUT)
            self.ctl = port
            if self._ready():
                return self
            self.close()
        raise RuntimeError(f"tgtd did not start in {self.netns}; see {self.log}")

    def _ready(self) -> bool:
        assert self.proc is not None
        for _ in range(200):
            if self.proc.poll() is not None:
                return False
            ok = subprocess.run(["tgtadm", "-C", str(self.ctl), "--mode", "sys", "--op", "show"],
                                check=False, capture_output=True, timeout=10).returncode == 0
            if ok and self.proc.poll() is None:
                return True
            time.sleep(0.05)
        return False

    def adm(self, *args: str) -> None:
        subprocess.run(["tgtadm", "-C", str(self.ctl), "--lld", "iscsi", *args], check=True, capture_output=True,
                       text=True, timeout=10)

    def configure(self, backing: Path, chap: tuple[str, str] | None = None,
                  mutual: tuple[str, str] | None = None) -> Tgtd:
        self.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", IQN)
        self.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", str(backing))
        if chap:
            self.adm("--mode", "account", "--op", "new", "--user", chap[0], "--password", chap[1])
            self.adm("--mode", "account", "--op", "bind", "--tid", "1", "--user", chap[0])
        if mutual:
            self.adm("--mode", "account", "--op", "new", "--user", mutual[0], "--password", mutual[1])
            self.adm("--mode", "account", "--op", "bind", "--tid", "1", "--user", mutual[0], "--outgoing")
        # The ACL last: no initiator gets in before the LUN exists.
        self.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
        return self

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # also ends a SIGSTOPped daemon
            self.proc.wait(timeout=30)
        if self.proc is not None and self.ctl:
            for name in (f"socket.{self.ctl}", f"socket.{self.ctl}.lock"):  # our dead daemon's files
                with contextlib.suppress(FileNotFoundError):
                    (TGTD_RUN_DIR / name).unlink()
        self.proc = None


class Probe:
    """``python -m hacontrol.cli.probe io --json`` in the client namespace; stderr events parsed as they come."""

    def __init__(self, netns: str, tmp_path: Path, *args: str) -> None:
        self.stop_file = tmp_path / f"stop-{secrets.token_hex(4)}"
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "hacontrol.cli.probe", "io", "--json",
                "--stop-file", str(self.stop_file), "--target", IQN, "--initiator-name", INITIATOR, *args]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._threads = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=lambda: self.stdout.extend(self.proc.stdout), daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))

    def wait_for(self, event: str, predicate: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                found = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty():
                    break
                continue
            if found.get("event") == event and predicate(found):
                return found
        state = f"exited {self.proc.returncode}" if self.proc.poll() is not None else "still running"
        pytest.fail(f"probe ({state}) never logged {event}; stderr tail:\n{''.join(self.stderr[-15:])}")

    def finish(self) -> tuple[int, dict[str, Any] | None, str]:
        """Wait for the exit (the run is bounded by its own duration + verify budget); (code, report, all output)."""
        code = self.proc.wait(timeout=300)
        for thread in self._threads:
            thread.join(timeout=30)
        out = "".join(self.stdout)
        report = json.loads(out) if out.strip() else None
        return code, report, out + "".join(self.stderr)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def lab() -> Iterator[Topology]:
    with Topology(f"hpr{secrets.token_hex(3)}") as topo:
        topo.create(["tgt-a", "client", "tgt-b"])
        yield topo


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    path = tmp_path / "lun1.img"
    with path.open("wb") as f:
        f.truncate(LUN_BYTES)
    return path


@pytest.fixture
def daemons(lab: Topology, tmp_path: Path) -> Iterator[Callable[[str], Tgtd]]:
    """A factory of started tgtds in a member namespace; every one is killed by PID at teardown."""
    started: list[Tgtd] = []

    def start(member: str) -> Tgtd:
        m = lab.members[member]
        tgtd = Tgtd(m.netns, str(m.address.ip), tmp_path / f"tgtd-{member}.log")
        started.append(tgtd)
        return tgtd.start()

    yield start
    for tgtd in started:
        tgtd.close()


@pytest.fixture
def probes(lab: Topology, tmp_path: Path) -> Iterator[Callable[..., Probe]]:
    started: list[Probe] = []

    def start(*args: str) -> Probe:
        started.append(Probe(lab.members["client"].netns, tmp_path, *args))
        return started[-1]

    yield start
    for probe in started:
        probe.close()


def secret_file(tmp_path: Path, name: str, secret: str) -> str:
    path = tmp_path / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return str(path)


def test_clean_run(daemons, probes, backing):
    tgt = daemons("tgt-a").configure(backing)
    code, report, _ = probes("--portal", tgt.portal, "--lun", "1", "--duration", "2").finish()
    assert code == 0, report
    assert report["writes_lost"] == 0 and report["io_errors"] == 0
    assert report["writes_acknowledged"] == report["writes_verified"] == report["writes_attempted"] > 0
    assert report["verification_complete"] and report["stopped_by"] == "duration"
    # tgt raises UNIT ATTENTION 06/29/00 on a new session's first command: retried, not an error.
    assert set(report["errors_by_kind"]) <= {"unit_attention"}
    assert report["outages"] == []
    assert [e["event"] for e in report["connection_events"]] == ["logged_in", "logged_out"]


@pytest.mark.parametrize("mode", ["one-way", "mutual"])
def test_chap_login(daemons, probes, backing, tmp_path, mode):
    chap = ("probe-user", "chap-secret-" + secrets.token_hex(8))
    mutual = ("target-user", "mutual-secret-" + secrets.token_hex(8)) if mode == "mutual" else None
    tgt = daemons("tgt-a").configure(backing, chap=chap, mutual=mutual)
    args = ["--portal", tgt.portal, "--lun", "1", "--duration", "1",
            "--chap-user", chap[0], "--chap-secret-file", secret_file(tmp_path, "chap", chap[1])]
    if mutual:
        args += ["--mutual-user", mutual[0], "--mutual-secret-file", secret_file(tmp_path, "mutual", mutual[1])]
    code, report, output = probes(*args).finish()
    assert code == 0, output
    assert report["chap"] == mode and report["writes_verified"] > 0 and report["writes_lost"] == 0
    assert chap[1] not in output and (mutual is None or mutual[1] not in output)


@pytest.mark.parametrize("wrong", ["initiator-secret", "target-secret"])
def test_wrong_chap_is_a_clear_login_failure(daemons, probes, backing, tmp_path, wrong):
    chap = ("probe-user", "chap-secret-" + secrets.token_hex(8))
    mutual = ("target-user", "mutual-secret-" + secrets.token_hex(8))
    bad = "not-the-secret-" + secrets.token_hex(8)
    tgt = daemons("tgt-a").configure(backing, chap=chap, mutual=mutual)
    given_chap, given_mutual = (bad, mutual[1]) if wrong == "initiator-secret" else (chap[1], bad)
    code, report, output = probes(
        "--portal", tgt.portal, "--lun", "1", "--duration", "30",
        "--chap-user", chap[0], "--chap-secret-file", secret_file(tmp_path, "chap", given_chap),
        "--mutual-user", mutual[0], "--mutual-secret-file", secret_file(tmp_path, "mutual", given_mutual),
    ).finish()
    assert code == 2
    expected = "Authentication failure" if wrong == "initiator-secret" else "Invalid CHAP_R"
    assert report["fatal"].startswith(f"login failed at {tgt.portal}") and expected in report["fatal"]
    assert report["writes_attempted"] == 0 and report["errors_by_kind"] == {"login_failed": 1}
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith("probe io: FAILED: login failed") and expected in last_line
    for secret in (chap[1], mutual[1], bad):
        assert secret not in output


@pytest.mark.parametrize("restart_in", ["tgt-a", "tgt-b"], ids=["same-portal", "moved-portal"])
def test_tgtd_killed_and_restarted(daemons, probes, backing, lab, restart_in):
    first = daemons("tgt-a").configure(backing)
    portals = [first.portal] + ([f"{lab.members['tgt-b'].address.ip}:3260"] if restart_in == "tgt-b" else [])
    probe = probes(*[a for p in portals for a in ("--portal", p)], "--lun", "1", "--duration", "120",
                   "--command-timeout", "2", "--login-timeout", "2")
    probe.wait_for("probe.progress", lambda e: e["writes_acknowledged"] >= 50)
    first.close()  # SIGKILL by PID: the kernel resets the connection, the target is gone
    lost = probe.wait_for("probe.connection_lost")
    second = daemons(restart_in).configure(backing)  # same backing file: whatever was acknowledged is there
    back = probe.wait_for("probe.logged_in", lambda e: e["t_s"] > lost["t_s"])
    probe.wait_for("probe.progress", lambda e: e["t_s"] > back["t_s"])
    probe.stop_file.touch()
    code, report, output = probe.finish()

    assert code == 0, output
    assert report["writes_lost"] == 0 and report["io_errors"] == 0 and report["verification_complete"]
    assert report["writes_verified"] == report["writes_acknowledged"] and report["stopped_by"] == "stop_file"
    outage = report["outages"][0]
    assert outage["cause"] == "connection_lost" and outage["lost_portal"] == first.portal
    assert outage["relogin_portal"] == second.portal == back["portal"]
    assert outage["lost_t_s"] < outage["relogin_t_s"] <= outage["first_io_t_s"]
    # The I/O stalled at least from the loss to the relogin, and the report's longest pause covers that.
    assert report["io_pause_s"] >= outage["relogin_t_s"] - outage["lost_t_s"] - 1e-6
    assert report["io_pause_start_s"] <= outage["lost_t_s"]
    events = [(e["event"], e["portal"]) for e in report["connection_events"]]
    assert events[:3] == [("logged_in", first.portal), ("lost", first.portal), ("logged_in", second.portal)]
    assert report["errors_by_kind"]["connection_lost"] >= 1
    lost_detail = report["connection_events"][1]["detail"]
    assert "SENSE" not in lost_detail  # not the stale text of an earlier UNIT ATTENTION (libiscsi leaves it set)


def test_stopped_target_times_out_and_recovers(daemons, probes, backing):
    tgt = daemons("tgt-a").configure(backing)
    probe = probes("--portal", tgt.portal, "--lun", "1", "--duration", "120",
                   "--command-timeout", "1", "--login-timeout", "1")
    probe.wait_for("probe.progress", lambda e: e["writes_acknowledged"] >= 50)
    tgt.send(signal.SIGSTOP)  # a hung controller: no FIN, no RST, no answer
    lost = probe.wait_for("probe.connection_lost", lambda e: e["kind"] == "timeout")
    probe.wait_for("probe.login_failed", lambda e: "no answer" in e["detail"])  # the kernel accepts, tgtd is mute
    tgt.send(signal.SIGCONT)
    back = probe.wait_for("probe.logged_in", lambda e: e["t_s"] > lost["t_s"])
    probe.wait_for("probe.progress", lambda e: e["t_s"] > back["t_s"])
    probe.proc.send_signal(signal.SIGTERM)  # ends the I/O phase; verification still runs
    code, report, output = probe.finish()

    assert code == 0, output
    assert report["stopped_by"] == "signal:SIGTERM" and report["verification_complete"]
    assert report["writes_lost"] == 0 and report["writes_verified"] == report["writes_acknowledged"]
    assert report["errors_by_kind"]["timeout"] >= 1 and report["errors_by_kind"]["login_failed"] >= 1
    assert report["outages"][0]["cause"] == "timeout"
    assert report["io_errors"] == 0  # the timed-out write was reissued after the relogin and completed


def test_lost_writes_are_detected(daemons, probes, backing):
    """The check can fail: acknowledged blocks overwritten behind the probe's back are reported lost."""
    tgt = daemons("tgt-a").configure(backing)
    probe = probes("--portal", tgt.portal, "--lun", "1", "--duration", "120", "--offset-blocks", "100")
    probe.wait_for("probe.progress", lambda e: e["writes_acknowledged"] >= 300)
    # Seqs 0..99 went to LBAs 100..199 long ago and the region does not wrap: zero them in the backing file
    # (tgt's file backend reads through the same page cache).
    with backing.open("r+b") as f:
        f.seek(100 * 512)
        f.write(bytes(100 * 512))
        f.flush()
        os.fsync(f.fileno())
    probe.stop_file.touch()
    code, report, output = probe.finish()

    assert code == 1
    assert report["block_size"] == 512 and report["io_errors"] == 0
    assert report["writes_lost"] == 100
    assert {w["lba"] for w in report["lost_writes"]} == set(range(100, 200))
    assert all(w["found"] == "foreign data" for w in report["lost_writes"])
    assert report["writes_verified"] == report["writes_acknowledged"] - 100
    assert output.strip().splitlines()[-1] == (
        f"probe io: FAILED: 100 of {report['writes_acknowledged']} acknowledged writes lost "
        "(first: seq 0 at LBA 100: found foreign data)")


def test_lun_not_supported_is_decoded(daemons, probes, backing):
    tgt = daemons("tgt-a").configure(backing)
    code, report, output = probes("--portal", tgt.portal, "--lun", "7", "--duration", "5").finish()
    assert code == 2
    assert "ILLEGAL REQUEST 05/25/00: LOGICAL UNIT NOT SUPPORTED" in report["fatal"]
    sense = [e["sense"] for e in report["errors"] if e["sense"]]
    assert {"code": "05/25/00", "key": "ILLEGAL REQUEST", "description": "LOGICAL UNIT NOT SUPPORTED"} in sense
    assert "LOGICAL UNIT NOT SUPPORTED" in output.strip().splitlines()[-1]


# -- Session in a forked child inside the client namespace -------------------------------------------------

CLONE_NEWNET = 0x40000000


def _enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child that entered ``netns``; its pickled result comes back through a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read_fd)
            _enter_netns(netns)
            payload = pickle.dumps(("ok", fn()))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        try:
            with os.fdopen(write_fd, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks, deadline = [], time.monotonic() + WAIT_S
    with os.fdopen(read_fd, "rb") as pipe:
        while (remaining := deadline - time.monotonic()) > 0:
            if select.select([pipe], [], [], remaining)[0]:
                chunk = os.read(pipe.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    if remaining <= 0:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert remaining > 0, "the child did not finish"
    status, value = pickle.loads(b"".join(chunks))
    assert status == "ok", value
    return value


def session_checks(portal: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Session(Target(IQN, 1, INITIATOR)) as session:
        session.connect(portal, timeout_s=5)
        out["first"] = session.test_unit_ready()
        capacity = parse_capacity16(session.read_capacity16().data)
        out["capacity"] = capacity
        out["past_end"] = session.read16(capacity.last_lba + 1, 1, capacity.block_size)
        out["inquiry"] = session.inquiry()
        out["vpd"] = session.execute(cdb_inquiry(evpd=True, page=0x00, alloc_len=255), data_in_len=255)
        out["payload"] = os.urandom(capacity.block_size)
        out["write"] = session.execute(cdb_write16(10, 1), data_out=out["payload"])
        out["read"] = session.read16(10, 1, capacity.block_size)
        session.connect(portal, timeout_s=5)  # reconnect = a new login on the same Session
        out["after_reconnect"] = session.test_unit_ready()
    with Session(Target(IQN, 7, INITIATOR)) as session:
        session.connect(portal, timeout_s=5)  # the login is per target: a missing LUN shows in commands
        out["lun7"] = session.read_capacity16()
    return out


def test_session_decodes_real_sense(daemons, backing, lab):
    tgt = daemons("tgt-a").configure(backing)
    out = in_netns(lab.members["client"].netns, lambda: session_checks(tgt.portal))

    assert out["first"].sense == Sense(0x6, 0x29, 0x00)  # tgt: POWER ON, RESET on a new I_T nexus
    assert out["capacity"].blocks * out["capacity"].block_size == LUN_BYTES
    past_end = out["past_end"]
    assert past_end.status_name == "CHECK CONDITION"
    assert past_end.sense == Sense(0x5, 0x21, 0x00)
    assert past_end.describe() == "CHECK CONDITION ILLEGAL REQUEST 05/21/00: LOGICAL BLOCK ADDRESS OUT OF RANGE"
    assert parse_sense(past_end.sense_raw) == past_end.sense  # libiscsi's struct and the raw bytes agree
    assert out["lun7"].sense == Sense(0x5, 0x25, 0x00)
    assert out["inquiry"].ok and out["inquiry"].data[0] & 0x1F == 0  # direct-access block device
    vpd = out["vpd"]
    assert vpd.ok and vpd.data[1] == 0x00 and 0x83 in vpd.data[4:4 + vpd.data[3]]
    assert out["write"].ok and out["read"].data == out["payload"]
    assert out["after_reconnect"].ok or out["after_reconnect"].sense.is_unit_attention()
