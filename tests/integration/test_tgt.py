"""The tgt adapter against real tgtds in network namespaces, seen from libiscsi initiators.

Topology: ``ctrl-a`` (10.77.0.1) and ``ctrl-b`` (10.77.0.2) run tgtd; ``client`` (10.77.0.3) and
``outsider`` (10.77.0.4) run libiscsi's tools. Every address lives in namespaces this module creates; every
tgtd and initiator process is ended by its PID before the namespaces go. Nothing here asserts a duration:
waits are bounded, and a wait that runs out is a failure of correctness.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hacontrol.adapters.tgt import Command, StepKind, Tgtadm, TgtadmError, TgtTarget
from hacontrol.agent.protocols import AdapterError
from hacontrol.config import loads
from hacontrol.config.schema import Config
from hacontrol.lab import tgtd as lab_tgtd
from hacontrol.lab.netns import Topology, topology
from tests.unit.test_tgt_fake import chap, config_text, lun

pytestmark = [pytest.mark.tgt, pytest.mark.netns]

IQN = "iqn.2026-11.com.example:array1"
CLIENT = "iqn.2026-11.com.example:client"
OUTSIDER = "iqn.2026-11.com.example:outsider"
SN1, SN2 = "6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7", "0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e"
TARGET_CHAP = chap("array1", "Array1-Chap-01", "array1-target", "Array1-Mutual-1")
DISCOVERY_CHAP = chap("discovery", "disc0very-Secr3t", "discovery-target", "Disc-Mutual-01")
ALL_SECRETS = ("Array1-Chap-01", "Array1-Mutual-1", "disc0very-Secr3t", "Disc-Mutual-01", "Client-Chap-01")
WAIT_S = 30.0  # bound for anything awaited; a healthy run needs a small fraction
VIP = "10.77.0.100"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("tgtd", "tgtadm", "ip", "ss", "iscsi-inq", "iscsi-ls", "iscsi-readcapacity16", "iscsi-perf"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt packages tgt, libiscsi-bin, iproute2)"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology(f"tgt{secrets.token_hex(3)}", ["ctrl-a", "ctrl-b", "client", "outsider"],
                  ipv6_network=None) as t:
        yield t


def _free_control_port() -> int:
    for _ in range(50):
        port = 20000 + secrets.randbelow(12000)  # tgtd's control port is a C short
        if lab_tgtd.control_port_free(port) and not (lab_tgtd.IPC_DIR / f"socket.{port}").exists():
            return port
    raise RuntimeError("no free tgtd control port found")


@pytest.fixture
def daemons(topo: Topology, tmp_path: Path) -> Iterator[Callable[..., lab_tgtd.Tgtd]]:
    """Start tgtds in member namespaces (portal: the member's address, or given ones); all stopped by PID."""
    started: list[lab_tgtd.Tgtd] = []

    def start(member: str, portals: tuple[str, ...] = (), port: int | None = None, **kw) -> lab_tgtd.Tgtd:
        m = topo.members[member]
        tgtd = lab_tgtd.start(m.netns, port or _free_control_port(), portals or (str(m.address.ip),),
                              log_path=tmp_path / f"tgtd-{member}.log", **kw)
        started.append(tgtd)
        return tgtd

    yield start
    for tgtd in started:
        tgtd.stop()


@pytest.fixture
def disks(tmp_path: Path) -> list[str]:
    paths = []
    for i in range(3):
        path = tmp_path / f"disk{i}.img"
        with path.open("wb") as f:
            f.truncate(64 << 20)
        paths.append(str(path))
    return paths


def config(disks: list[str], **changes: object) -> Config:
    """LUN 1 thin and write-through, LUN 2 thick with write cache; CHAP with mutual; one ACL; discovery CHAP."""
    target = {"iqn": IQN, "auth": TARGET_CHAP,
              "lun": [lun(1, disks[0], SN1, thin=True), lun(2, disks[1], SN2, write_cache=True)],
              "acl": [{"initiator": CLIENT}]}
    target |= changes
    return loads(config_text([target], discovery=DISCOVERY_CHAP))


def adapter(tgtd: lab_tgtd.Tgtd, **kw) -> TgtTarget:
    return TgtTarget(tgtd.control_port, tgtd.netns, **kw)


# -- initiator side ---------------------------------------------------------------------------------------


def url(host: str, lun_id: int | None = 1, *, user: str | None = "array1", password: str = "Array1-Chap-01",
        target_user: str | None = None, target_password: str = "") -> str:
    auth = f"{user}%{password}@" if user else ""
    path = f"/{IQN}/{lun_id}" if lun_id is not None else ""
    mutual = f"?target_user={target_user}&target_password={target_password}" if target_user else ""
    return f"iscsi://{auth}{host}{path}{mutual}"


def initiator(topo: Topology, argv: list[str], member: str = "client") -> subprocess.CompletedProcess:
    return topo.run(member, argv, check=False, timeout=WAIT_S)


def inquiry(topo: Topology, target_url: str, page: int | None = None, name: str = CLIENT,
            member: str = "client") -> subprocess.CompletedProcess:
    # iscsi-inq parses -c as a decimal integer: "-c 0x80" silently asks for page 0.
    vpd = ["-e", "1", "-c", str(page)] if page is not None else []
    return initiator(topo, ["iscsi-inq", "-i", name, *vpd, target_url], member)


# A few SCSI commands through libiscsi's C API, to read bytes iscsi-inq does not print (NAA, mode page 8).
RAW_SCSI = r"""
import ctypes, sys
lib = ctypes.CDLL("libiscsi.so.7")
lib.iscsi_create_context.restype = lib.scsi_create_task.restype = ctypes.c_void_p
lib.iscsi_get_error.restype = ctypes.c_char_p
portal, iqn, lun, name, user, password, cdb, alloc = sys.argv[1:9]
ctx = ctypes.c_void_p(lib.iscsi_create_context(name.encode()))
lib.iscsi_set_targetname(ctx, iqn.encode())
lib.iscsi_set_session_type(ctx, 2)
lib.iscsi_set_header_digest(ctx, 0)
lib.iscsi_set_initiator_username_pwd(ctx, user.encode(), password.encode())
if lib.iscsi_full_connect_sync(ctx, portal.encode(), int(lun)) != 0:
    sys.exit("login failed: " + lib.iscsi_get_error(ctx).decode())
raw = bytes.fromhex(cdb)
for attempt in range(2):  # tgt answers a session's first command with UNIT ATTENTION (power on/reset)
    task = ctypes.c_void_p(lib.scsi_create_task(len(raw), (ctypes.c_ubyte * len(raw))(*raw), 1, int(alloc)))
    buf = (ctypes.c_ubyte * int(alloc))()
    lib.scsi_task_add_data_in_buffer(task, int(alloc), buf)
    lib.iscsi_scsi_command_sync(ctx, int(lun), task, None)
    status = lib.scsi_task_get_status(task, None)
    lib.scsi_free_scsi_task(task)
    if status == 0:
        break
lib.iscsi_logout_sync(ctx)
lib.iscsi_destroy_context(ctx)
print(status, bytes(buf).hex())
"""


def raw_scsi(topo: Topology, host: str, lun_id: int, cdb: str, alloc: int = 255) -> bytes:
    done = initiator(topo, [sys.executable, "-c", RAW_SCSI, host, IQN, str(lun_id), CLIENT, "array1",
                            "Array1-Chap-01", cdb, str(alloc)])
    assert done.returncode == 0, done.stderr
    status, data = done.stdout.split()
    assert status == "0", f"SCSI status {status}"
    return bytes.fromhex(data)


def naa_designators(vpd83: bytes) -> list[str]:
    """The NAA designators (type 3) of a Device Identification page, as hex."""
    found, offset, end = [], 4, 4 + int.from_bytes(vpd83[2:4], "big")
    while offset + 4 <= end:
        kind, length = vpd83[offset + 1] & 0x0F, vpd83[offset + 3]
        if kind == 3:
            found.append(vpd83[offset + 4: offset + 4 + length].hex())
        offset += 4 + length
    return found


def write_cache_enabled(topo: Topology, host: str, lun_id: int) -> bool:
    data = raw_scsi(topo, host, lun_id, "1a080800ff00")  # MODE SENSE(6), DBD, caching page
    page = data[4 + data[3]:]  # skip the header and any block descriptors
    assert page[0] & 0x3F == 0x08
    return bool(page[2] & 0x04)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.05) + 1):
        if condition():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


class Counting(Tgtadm):
    """A real tgtadm runner that records every command (redacted text only)."""

    def __init__(self, control_port: int, before: Callable[[Command], None] | None = None,
                 fail_at: int | None = None):
        super().__init__(control_port)
        self.sent: list[str] = []
        self.before = before
        self.fail_at = fail_at

    def run(self, command: Command, deadline: float | None = None) -> str:
        self.sent.append(str(command))
        if self.before is not None:
            self.before(command)
        if command.mutating and self.fail_at is not None and self.mutations + 1 == self.fail_at:
            self.mutations += 1
            raise TgtadmError(command, "injected failure", 22)
        return super().run(command, deadline)


# -- apply ------------------------------------------------------------------------------------------------


def test_apply_from_empty_then_reapply_runs_no_mutating_command(topo, daemons, disks):
    tgtd = daemons("ctrl-a")
    runner = Counting(tgtd.control_port)
    target = TgtTarget(tgtd.control_port, tgtd.netns, runner=runner)
    cfg = config(disks)
    with capture_logs() as logs:
        first = target.apply(cfg, "ctrl-a")
    assert first.mutating_commands > 0 and target.configured(cfg, "ctrl-a")
    snap = target.observe()
    t = snap.target(IQN)
    assert [(lu.lun, lu.path, lu.scsi_sn, lu.thin) for lu in t.disk_luns] == [(1, disks[0], SN1, True),
                                                                             (2, disks[1], SN2, False)]
    assert t.incoming == ("array1",) and t.outgoing == "array1-target" and t.acl == (CLIENT,)
    assert snap.discovery_incoming == ("discovery",)
    sent = len(runner.sent)
    second = target.apply(cfg, "ctrl-a")
    assert second.noop and second.steps == ()
    assert not [c for c in runner.sent[sent:] if "--op show" not in c]  # only reads
    text = repr(logs) + " ".join(runner.sent)
    assert not [s for s in ALL_SECRETS if s in text]
    assert inquiry(topo, url("10.77.0.1")).returncode == 0


def test_changing_one_lun_setting_updates_only_that(topo, daemons, disks):
    tgtd = daemons("ctrl-a")
    target = adapter(tgtd)
    target.apply(config(disks), "ctrl-a")
    before = target.observe().target(IQN)
    changed = config(disks, lun=[lun(1, disks[0], SN1, thin=True), lun(2, disks[1], SN2, thin=True,
                                                                         write_cache=True)])
    report = target.apply(changed, "ctrl-a")
    assert report.steps == (f"set_lun {IQN} LUN 2 (thin_provisioning)",) and report.mutating_commands == 1
    after = target.observe().target(IQN)
    assert after.lun(1) == before.lun(1) and after.lun(2).thin and not before.lun(2).thin
    capacity = initiator(topo, ["iscsi-readcapacity16", "-i", CLIENT, url("10.77.0.1", 2)])
    assert "LBPME:1" in capacity.stdout, capacity


def test_serial_and_naa_are_the_same_on_both_controllers(topo, daemons, disks):
    cfg = config(disks)
    naa = cfg.targets[0].luns[0].naa.removeprefix("naa.")
    seen = []
    for member, host in (("ctrl-a", "10.77.0.1"), ("ctrl-b", "10.77.0.2")):
        adapter(daemons(member)).apply(cfg, member)
        serial = inquiry(topo, url(host), page=0x80)
        assert serial.returncode == 0, serial.stderr
        ids = naa_designators(raw_scsi(topo, host, 1, "12018300ff00"))  # INQUIRY VPD 0x83
        assert naa in ids  # NAA IEEE Registered Extended == the configured identity (LIO's too)
        seen.append((serial.stdout.split("[")[1].split("]")[0].strip(), ids))
    assert seen[0] == seen[1] and seen[0][0] == SN1


def test_write_cache_follows_the_configuration(topo, daemons, disks):
    adapter(daemons("ctrl-a")).apply(config(disks), "ctrl-a")
    assert write_cache_enabled(topo, "10.77.0.1", 1) is False  # write-through: tgt fdatasyncs every write
    assert write_cache_enabled(topo, "10.77.0.1", 2) is True


def test_thin_lun_advertises_logical_block_provisioning(topo, daemons, disks):
    adapter(daemons("ctrl-a")).apply(config(disks), "ctrl-a")
    thin = initiator(topo, ["iscsi-readcapacity16", "-i", CLIENT, url("10.77.0.1", 1)])
    thick = initiator(topo, ["iscsi-readcapacity16", "-i", CLIENT, url("10.77.0.1", 2)])
    assert "LBPME:1" in thin.stdout and "LBPME:0" in thick.stdout, (thin, thick)
    lbp = inquiry(topo, url("10.77.0.1", 1), page=0xB2)
    assert "lbpu:1" in lbp.stdout and "lbpws:1" in lbp.stdout, lbp


# -- access ------------------------------------------------------------------------------------------------


def test_chap_right_secret_logs_in_wrong_secret_or_none_is_refused(topo, daemons, disks):
    adapter(daemons("ctrl-a")).apply(config(disks), "ctrl-a")
    assert inquiry(topo, url("10.77.0.1")).returncode == 0
    for bad in (url("10.77.0.1", password="Wrong-Secret-1"), url("10.77.0.1", user=None)):
        refused = inquiry(topo, bad)
        assert refused.returncode != 0 and "Authentication failure" in refused.stdout + refused.stderr


def test_mutual_chap_is_verified_both_ways(topo, daemons, disks):
    adapter(daemons("ctrl-a")).apply(config(disks), "ctrl-a")
    good = inquiry(topo, url("10.77.0.1", target_user="array1-target", target_password="Array1-Mutual-1"))
    assert good.returncode == 0, good.stderr
    impostor = inquiry(topo, url("10.77.0.1", target_user="array1-target", target_password="Not-The-Target1"))
    assert impostor.returncode != 0 and "CHAP_R" in impostor.stdout + impostor.stderr
    wrong_initiator = inquiry(topo, url("10.77.0.1", password="Wrong-Secret-1", target_user="array1-target",
                                        target_password="Array1-Mutual-1"))
    assert wrong_initiator.returncode != 0


def test_acl_refuses_an_initiator_name_outside_it(topo, daemons, disks):
    adapter(daemons("ctrl-a")).apply(config(disks), "ctrl-a")
    refused = inquiry(topo, url("10.77.0.1"), name=OUTSIDER)
    assert refused.returncode != 0 and "Target not found" in refused.stdout + refused.stderr


def test_acl_by_network_refuses_an_address_outside_it(topo, daemons, disks):
    cfg = config(disks, acl=[], allowed_networks=["10.77.0.3/32"])  # the client only
    adapter(daemons("ctrl-a")).apply(cfg, "ctrl-a")
    assert inquiry(topo, url("10.77.0.1"), name=OUTSIDER).returncode == 0  # any name, from the client
    refused = inquiry(topo, url("10.77.0.1"), name=OUTSIDER, member="outsider")
    assert refused.returncode != 0 and "Target not found" in refused.stdout + refused.stderr


def test_discovery_needs_the_discovery_secret_and_proves_the_target(topo, daemons, disks):
    adapter(daemons("ctrl-a")).apply(config(disks), "ctrl-a")
    portal = "iscsi://discovery%disc0very-Secr3t@10.77.0.1"
    listed = initiator(topo, ["iscsi-ls", "-i", CLIENT, portal])
    assert f"Target:{IQN}" in listed.stdout, listed
    refused = initiator(topo, ["iscsi-ls", "-i", CLIENT, "iscsi://10.77.0.1"])
    assert "Authentication failure" in refused.stdout + refused.stderr
    for password, ok in (("Disc-Mutual-01", True), ("Not-The-Target1", False)):
        env = {**os.environ, "LIBISCSI_CHAP_TARGET_USERNAME": "discovery-target",
               "LIBISCSI_CHAP_TARGET_PASSWORD": password}  # iscsi-ls takes mutual CHAP only from the environment
        mutual = topo.run("client", ["iscsi-ls", "-i", CLIENT, portal], check=False, timeout=WAIT_S, env=env)
        assert (f"Target:{IQN}" in mutual.stdout) is ok and ("CHAP_R" in mutual.stdout + mutual.stderr) is not ok


# -- failure and recovery ---------------------------------------------------------------------------------


def test_a_step_failing_midway_leaves_tgtd_as_it_was(topo, daemons, disks):
    tgtd = daemons("ctrl-a")
    adapter(tgtd).apply(config(disks), "ctrl-a")
    before = adapter(tgtd).observe().without_sessions()
    change = config(disks, lun=[lun(1, disks[0], SN1), lun(3, disks[2], "a1b2c3d4e5f60718293a4b5c6d7e8f90")],
                    acl=[{"initiator": CLIENT, "auth": chap("client", "Client-Chap-01")}])
    sneaky = ["tgtadm", "-C", str(tgtd.control_port), "--lld", "iscsi", "--mode", "account", "--op", "new",
              "--user", "client", "--password", "Somebody-Else1"]

    def interfere(command: Command) -> None:
        # Someone creates our new account between our look and our change: tgtadm itself refuses the step.
        if command.args[:4] == ("--mode", "account", "--op", "new") and "client" in command.args:
            subprocess.run(sneaky, check=True, capture_output=True, timeout=10)

    target = TgtTarget(tgtd.control_port, tgtd.netns, runner=Counting(tgtd.control_port, before=interfere))
    with pytest.raises(AdapterError, match=r"create_account account client\): this account already exists"):
        target.apply(change, "ctrl-a")
    after = target.observe().without_sessions()
    assert after.targets == before.targets and set(after.accounts) == {*before.accounts, "client"}
    assert inquiry(topo, url("10.77.0.1", 1)).returncode == 0  # the old credentials still work
    other = config(disks, lun=[lun(1, disks[0], SN1, thin=False)], acl=[{"initiator": OUTSIDER}])
    total = len(adapter(tgtd).plan(other, "ctrl-a"))
    assert total >= 4  # LUN change, ACL bind and unbind, LUN removal
    for fail_at in range(1, total + 1):
        failing = TgtTarget(tgtd.control_port, tgtd.netns, runner=Counting(tgtd.control_port, fail_at=fail_at))
        with pytest.raises(AdapterError, match=rf"step {fail_at}/{total} .*injected failure"):
            failing.apply(other, "ctrl-a")
        assert failing.observe().without_sessions() == after


def test_removing_the_first_of_several_accounts_keeps_tgtd_alive(topo, daemons, disks):
    """tgt 1.0.85 segfaults if a non-last incoming account is unbound; the adapter unbinds from the tail."""
    tgtd = daemons("ctrl-a")
    target = adapter(tgtd)
    acls = [{"initiator": CLIENT, "auth": chap("client", "Client-Chap-01")}]
    target.apply(config(disks, acl=acls), "ctrl-a")
    assert target.observe().target(IQN).incoming == ("array1", "client")
    target.apply(config(disks, acl=acls, auth=None), "ctrl-a")
    assert tgtd.alive()
    assert target.observe().target(IQN).incoming == ("client",)
    assert inquiry(topo, url("10.77.0.1", user="client", password="Client-Chap-01")).returncode == 0


def test_cut_connections_drops_the_sessions_on_that_address_only(topo, daemons, disks):
    topo.run("ctrl-a", ["ip", "addr", "add", f"{VIP}/24", "dev", "eth0"])
    try:
        tgtd = daemons("ctrl-a", portals=("10.77.0.1", VIP))
        target = adapter(tgtd)
        target.apply(config(disks, acl=[{"initiator": CLIENT}, {"initiator": OUTSIDER}]), "ctrl-a")
        perf = [_perf(topo, "client", CLIENT, VIP), _perf(topo, "outsider", OUTSIDER, "10.77.0.1")]
        try:
            wait_for(lambda: len(_sessions(target)) == 2, "both initiators logged in")
            before = _sessions(target)
            target.cut_connections(f"{VIP}/24", time.monotonic() + WAIT_S)
            wait_for(lambda: before[CLIENT] not in _sessions(target).values(), "the VIP session to go")
            assert _sessions(target)[OUTSIDER] == before[OUTSIDER]  # the static address kept its session
            assert all(p.poll() is None for p in perf)  # libiscsi reconnected rather than failed
        finally:
            for p in perf:
                p.kill()
                p.wait(timeout=WAIT_S)
    finally:
        topo.run("ctrl-a", ["ip", "addr", "del", f"{VIP}/24", "dev", "eth0"], check=False)


def _perf(topo: Topology, member: str, name: str, host: str) -> subprocess.Popen:
    """A libiscsi initiator that keeps one session busy (ended by PID in the test)."""
    argv = ["ip", "netns", "exec", topo.members[member].netns, "iscsi-perf", "-i", name, "-m", "1", "-t", "300",
            url(host, 1)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _sessions(target: TgtTarget) -> dict[str, int]:
    return {n.initiator: n.itn_id for n in target.observe().target(IQN).nexuses}


def test_tgtd_restart_then_apply_restores_everything(topo, daemons, disks):
    tgtd = daemons("ctrl-a")
    target = adapter(tgtd)
    cfg = config(disks)
    target.apply(cfg, "ctrl-a")
    configured = target.observe().without_sessions()
    port = tgtd.control_port
    tgtd.stop()
    again = daemons("ctrl-a", port=port)
    assert not target.configured(cfg, "ctrl-a")
    target.apply(cfg, "ctrl-a")
    assert again.alive() and target.observe().without_sessions() == configured
    assert inquiry(topo, url("10.77.0.1", target_user="array1-target",
                             target_password="Array1-Mutual-1")).returncode == 0


# -- what tgt does with LUN 0, and the lab runner ---------------------------------------------------------


def test_lun_0_belongs_to_tgt_and_is_refused_before_anything_changes(topo, daemons, disks):
    tgtd = daemons("ctrl-a")
    tgtadm = Tgtadm(tgtd.control_port)
    tgtadm.run(Command(("--mode", "target", "--op", "new", "--tid", "9", "--targetname", IQN + "-probe")))
    with pytest.raises(TgtadmError, match="this logical unit number already exists"):
        tgtadm.run(Command(("--mode", "logicalunit", "--op", "new", "--tid", "9", "--lun", "0",
                            "--backing-store", disks[0])))
    with pytest.raises(TgtadmError, match="invalid request"):
        tgtadm.run(Command(("--mode", "logicalunit", "--op", "delete", "--tid", "9", "--lun", "0")))
    target = TgtTarget(tgtd.control_port, tgtd.netns, tid_base=10, runner=Counting(tgtd.control_port))
    with pytest.raises(AdapterError, match=r"lun\[0\]\.id = 0: tgt reserves LUN 0"):
        target.apply(config(disks, lun=[lun(0, disks[0], SN1)]), "ctrl-a")
    assert target.runner.mutations == 0


def test_lab_tgtd_refuses_a_portal_it_could_not_bind(topo, daemons):
    with pytest.raises(lab_tgtd.TgtdError, match="fell back to every address"):
        daemons("ctrl-b", portals=("10.77.0.99",))
    tgtd = daemons("ctrl-b", portals=("10.77.0.99",), nonlocal_bind=True)  # a VIP that comes later
    assert adapter(tgtd).observe().portals == (("10.77.0.99", 3260),)
    assert tgtd.stop() is not None and not tgtd.alive()


def test_plan_is_what_apply_does(daemons, disks):
    tgtd = daemons("ctrl-a")
    target = adapter(tgtd)
    cfg = config(disks)
    planned = [str(s) for s in target.plan(cfg, "ctrl-a")]
    assert planned and target.plan(cfg, "ctrl-a")[0].kind is StepKind.CREATE_TARGET
    assert list(target.apply(cfg, "ctrl-a").steps) == planned
