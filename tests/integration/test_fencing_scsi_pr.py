"""scsi_pr against a real tgtd: two controllers, two LUNs, PR over libiscsi, inside network namespaces.

Layout: one Topology per module (tgt 10.77.0.1, ctrl-a, ctrl-b). Each test starts its own tgtd in the tgt
namespace (``hacontrol.lab.tgtd.start``, its own control port) with one target and LUNs 1 and 2 (LUN 0 is
tgt's controller) on sparse files, configured with tgtadm directly.

A "controller" is this very file run as a small server (``--serve``) under ``ip netns exec`` in its
controller's namespace: it owns a ScsiReservations whose iscsi:// transports keep their libiscsi sessions
(one I_T nexus per LUN, initiator name per controller) across requests, as an agent would. The test talks
to it over stdin/stdout, one JSON line each way, every read bounded; the servers are ended by PID.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # when run as the --serve helper
    sys.path.insert(0, str(REPO))

from hacontrol.adapters.fencing import pr_codec as pr  # noqa: E402
from hacontrol.adapters.fencing.scsi_pr import ScsiReservations  # noqa: E402
from hacontrol.agent.protocols import AdapterError  # noqa: E402

pytestmark = [pytest.mark.tgt, pytest.mark.netns]

IQN = "iqn.2024-01.org.hacontrol:fencing-test"
NAMES = {1: "ctrl-a", 2: "ctrl-b"}
LUN_BYTES = 8 << 20
WAIT_S = 30.0


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("tgtd", "tgtadm", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    from hacontrol.probe import libiscsi

    try:
        libiscsi.load()
    except libiscsi.LibiscsiMissing:
        return "needs libiscsi"
    return None


# --- the controller helper (runs in its namespace) -------------------------------------------------------


def serve(argv: list[str]) -> None:
    """Answer one JSON request per stdin line until EOF: take_over, register, observe, write, raw."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout carries answers
    node_id, require_all, devices = int(argv[0]), argv[1] == "1", argv[2:]
    pr_ = ScsiReservations(devices, node_id=node_id, peer_id=3 - node_id, timeout_s=5.0, names=NAMES,
                           require_all=require_all, cache_s=0.0, observe_timeout_s=3.0,
                           initiator_name=f"iqn.2024-01.org.hacontrol:{NAMES[node_id]}")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"ok": True, "result": _handle(pr_, request)}
        except AdapterError as exc:
            answer = {"ok": False, "error": str(exc)}
        print(json.dumps(answer), flush=True)
    pr_.close()


def _handle(pr_: ScsiReservations, request: dict[str, Any]) -> Any:
    op, deadline = request["op"], time.monotonic() + 10
    if op == "take_over":
        return pr_.take_over(request["epoch"], deadline)
    if op == "register":
        return pr_.register(request["epoch"], deadline)
    if op == "observe":
        s = pr_.observe(request["epoch"])
        return {"visible": s.visible, "my_key_epoch": s.my_key_epoch, "holder": s.holder,
                "stale_peer_key": s.stale_peer_key}
    if op == "write":  # WRITE(16) of one block at LBA 100 through each LUN's own session (= its I_T nexus)
        cdb = bytes([0x8A, 0]) + (100).to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(2)
        return [_status(d.transport, cdb, bytes(512)) for d in pr_.disks]
    if op == "preempt_and_abort":  # the raw command, to show what tgt answers
        command = pr.preempt(pr.pr_key(pr_.node_id, request["epoch"]), request["victim"], 5, abort=True)
        return [_status(d.transport, command.cdb, command.data) for d in pr_.disks]
    raise ValueError(f"unknown op {op}")


def _status(transport: Any, cdb: bytes, data: bytes) -> str:
    for _ in range(3):  # the first command after a preempt meets a UNIT ATTENTION
        reply = transport.command(cdb, data_out=data, timeout_s=5)
        if reply.sense is None or reply.sense.key != 0x6:
            break
    return reply.describe()


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    serve(sys.argv[2:])
    sys.exit(0)

if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)

from hacontrol.lab import tgtd as tgtd_lab  # noqa: E402
from hacontrol.lab.netns import Topology  # noqa: E402

# --- the test side -------------------------------------------------------------------------------------


class Controller:
    def __init__(self, netns: str, node_id: int, devices: list[str], log: Path, require_all: bool = True):
        argv = ["ip", "netns", "exec", netns, sys.executable, str(Path(__file__)), "--serve", str(node_id),
                "1" if require_all else "0", *devices]
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            pytest.fail(f"controller gave no answer to {op}; its log: {self.log.read_text()[-2000:]}")
        return json.loads(line)

    def ok(self, op: str, **kwargs: Any) -> Any:
        answer = self.call(op, **kwargs)
        assert answer["ok"], answer
        return answer["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID: the Popen we started
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def lab() -> Iterator[Topology]:
    with Topology(f"hfp{secrets.token_hex(3)}") as topo:
        topo.create(["tgt", "ctrl-a", "ctrl-b"])
        yield topo


@pytest.fixture
def target(lab: Topology, tmp_path: Path) -> Iterator[str]:
    """A tgtd with one target and LUNs 1 and 2; yields the tgt address. Killed by PID afterwards."""
    address = str(lab.members["tgt"].address.ip)
    daemon = None
    for _ in range(5):
        port = 20000 + secrets.randbelow(12000)
        if tgtd_lab.control_port_free(port) and not (tgtd_lab.IPC_DIR / f"socket.{port}").exists():
            daemon = tgtd_lab.start(lab.members["tgt"].netns, port, [address], log_path=tmp_path / "tgtd.log")
            break
    assert daemon is not None, "no free tgtd control port"
    try:
        def adm(*args: str) -> None:
            subprocess.run(["tgtadm", "-C", str(port), "--lld", "iscsi", *args], check=True, capture_output=True,
                           timeout=10)

        adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", IQN)
        for lun in (1, 2):
            backing = tmp_path / f"lun{lun}.img"
            with backing.open("wb") as f:
                f.truncate(LUN_BYTES)
            adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", str(lun), "--backing-store",
                str(backing))
        adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
        yield address
    finally:
        daemon.stop()


@pytest.fixture
def controllers(lab: Topology, tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    started: list[Controller] = []

    def start(node: str, devices: list[str], require_all: bool = True) -> Controller:
        log = tmp_path / f"{node}-{len(started)}.log"
        started.append(Controller(lab.members[node].netns, 1 if node == "ctrl-a" else 2, devices, log,
                                  require_all))
        return started[-1]

    yield start
    for c in started:
        c.close()


def luns(address: str, port: int = 3260) -> list[str]:
    return [f"iscsi://{address}:{port}/{IQN}/{lun}" for lun in (1, 2)]


def test_failover_between_two_controllers(target, controllers):
    a, b = controllers("ctrl-a", luns(target)), controllers("ctrl-b", luns(target))
    assert "holds 2/2 disks" in a.ok("take_over", epoch=1)
    assert a.ok("observe", epoch=1) == {"visible": True, "my_key_epoch": 1, "holder": ["ctrl-a", 1],
                                        "stale_peer_key": False}
    b.ok("register", epoch=1)
    assert b.ok("observe", epoch=1)["holder"] == ["ctrl-a", 1]
    assert a.ok("write") == ["GOOD", "GOOD"]

    result = b.ok("take_over", epoch=2)
    assert "PREEMPT 0x100000001" in result and "PREEMPT AND ABORT" not in result  # tgt: the fallback
    assert a.ok("write") == ["RESERVATION CONFLICT", "RESERVATION CONFLICT"]  # A is fenced off both LUNs
    assert b.ok("write") == ["GOOD", "GOOD"]
    assert a.ok("observe", epoch=2) == {"visible": True, "my_key_epoch": None, "holder": ["ctrl-b", 2],
                                        "stale_peer_key": False}

    a.ok("register", epoch=2)  # the old active rejoins as standby: registers, never preempts
    assert a.ok("observe", epoch=2)["my_key_epoch"] == 2
    assert b.ok("observe", epoch=2) == {"visible": True, "my_key_epoch": 2, "holder": ["ctrl-b", 2],
                                        "stale_peer_key": False}
    assert b.ok("write") == ["GOOD", "GOOD"]


def test_tgt_has_no_preempt_and_abort(target, controllers):
    a, b = controllers("ctrl-a", luns(target)), controllers("ctrl-b", luns(target))
    a.ok("take_over", epoch=1)
    b.ok("register", epoch=1)
    answers = b.ok("preempt_and_abort", epoch=1, victim=pr.pr_key(1, 1))
    assert answers == ["CHECK CONDITION ILLEGAL REQUEST 05/24/00: INVALID FIELD IN CDB"] * 2
    assert a.ok("write") == ["GOOD", "GOOD"]  # refused: nothing was preempted


def test_stale_controller_is_refused_by_the_disks(target, controllers):
    a, b = controllers("ctrl-a", luns(target)), controllers("ctrl-b", luns(target))
    a.ok("take_over", epoch=1)
    b.ok("take_over", epoch=2)
    answer = a.call("take_over", epoch=1)  # e.g. A resumed from a freeze, still believing in epoch 1
    assert not answer["ok"] and "registered under a newer epoch than 1" in answer["error"]
    assert b.ok("observe", epoch=2) == {"visible": True, "my_key_epoch": 2, "holder": ["ctrl-b", 2],
                                        "stale_peer_key": False}
    assert a.ok("write") == ["RESERVATION CONFLICT", "RESERVATION CONFLICT"]


def test_require_all_blocks_on_an_unreachable_lun(target, controllers):
    # LUN 2 through a portal nobody listens on: the path is down, the disk does not answer
    devices = [luns(target)[0], luns(target, port=3261)[1]]
    strict = controllers("ctrl-a", devices)
    answer = strict.call("take_over", epoch=1)
    assert not answer["ok"]
    assert f"iscsi://{target}:3261/{IQN}/2" in answer["error"] and "require_all_disks = true" in answer["error"]
    assert not strict.ok("observe", epoch=1)["visible"]

    lenient = controllers("ctrl-b", devices, require_all=False)
    result = lenient.ok("take_over", epoch=2)
    assert "holds 1/2 disks" in result and f"skipped: iscsi://{target}:3261/{IQN}/2" in result
    assert lenient.ok("observe", epoch=2) == {"visible": True, "my_key_epoch": 2, "holder": ["ctrl-b", 2],
                                              "stale_peer_key": False}


def prtool(lab: Topology, node: str, *args: str) -> tuple[int, dict[str, Any]]:
    """The hand tool (and the rig's command), one process per call as an operator would run it."""
    argv = ["ip", "netns", "exec", lab.members[node].netns, sys.executable, "-m",
            "hacontrol.adapters.fencing.prtool", *args]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return done.returncode, json.loads(done.stdout)


def test_prtool_shows_the_disks_and_checks_writes(lab, target, controllers):
    devices = luns(target)
    code, doc = prtool(lab, "ctrl-b", "write-check", *devices)
    assert code == 0 and set(doc["write_check"].values()) == {"GOOD"}  # no reservation yet
    controllers("ctrl-a", devices).ok("take_over", epoch=3)
    code, doc = prtool(lab, "ctrl-b", "--node-id", "2", "--peer-id", "1", "show", "--epoch", "3", *devices)
    assert code == 0 and doc["storage"] == {"pr": True, "visible": True, "my_key_epoch": None,
                                            "holder": ["node-1", 3], "stale_peer_key": False,
                                            "invisible_since": None}
    assert doc["disks"][0]["keys"] == ["0x0000000100000003 (node 1, epoch 3)"] and doc["disks"][0]["type"] == 5
    # a zero-block WRITE from an unregistered nexus: refused by the reservation, no data written
    code, doc = prtool(lab, "ctrl-b", "write-check", *devices)
    assert set(doc["write_check"].values()) == {"RESERVATION CONFLICT"}
    code, doc = prtool(lab, "ctrl-b", "--node-id", "2", "--peer-id", "1", "take-over", "--epoch", "2", *devices)
    assert code == 1 and "newer epoch than 2" in doc["error"]
    # the way out after a ZooKeeper epoch reset: clear everything, then epoch 2 works
    code, doc = prtool(lab, "ctrl-b", "--node-id", "2", "--peer-id", "1", "clear", "--epoch", "2", *devices)
    assert code == 0 and doc["storage"]["holder"] is None and all(d["keys"] == [] for d in doc["disks"])
    code, doc = prtool(lab, "ctrl-b", "--node-id", "2", "--peer-id", "1", "take-over", "--epoch", "2", *devices)
    assert code == 0 and doc["storage"]["my_key_epoch"] == 2
