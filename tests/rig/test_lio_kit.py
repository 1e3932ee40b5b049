"""Shared parts of the LIO rig tests (test_lio.py, test_lio_takeover.py): the configuration, the guest-side
driver of ``LioPort``, the host-side initiator in the rig's namespace, and the environment setup/teardown.

No tests here.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hacontrol.probe import vaai
from hacontrol.probe.session import Credentials, LoginFailed, Session, Target

ROOT = Path(__file__).resolve().parents[2]
PY = "/opt/hacontrol/venv/bin/python"
IQN = "iqn.2026-11.org.hacontrol.rig:array"
PROBE, PROBE2, ESX = ("iqn.2024-01.org.hacontrol:probe", "iqn.2024-01.org.hacontrol:probe2",
                      "iqn.2024-01.org.hacontrol:esx")
STRANGER = "iqn.2024-01.org.hacontrol:stranger"
PORTAL = {"ctrl-a": "10.50.1.111", "ctrl-b": "10.50.1.112"}
VIP = "10.50.1.100"
TARGET_CHAP = Credentials("array", "Array1-Chap-01")
ESX_CHAP = Credentials("esx01", "Esx01-Chap-Key1", "array-esx01", "Esx01-Mutual-K1")
SECRETS = ("Array1-Chap-01", "Array1-Mutual-1", "Esx01-Chap-Key1", "Esx01-Mutual-K1", "disc0very-Secr3t")
SN0, SN1 = "6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7", "0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e"
NOT_SUPPORTED = "05/25/00"
UA_ALUA = "06/2A/06"

CONFIG = """
[cluster]
name = "rig"
backend = "lio"
port_takeover = true

[[node]]
name = "ctrl-a"
id = 1
  [[node.interface]]
  name = "enp0s4"
  address = "10.50.1.11/24"
  [[node.portal]]
  address = "10.50.1.111/24"
  interface = "enp0s4"

[[node]]
name = "ctrl-b"
id = 2
  [[node.interface]]
  name = "enp0s4"
  address = "10.50.1.12/24"
  [[node.portal]]
  address = "10.50.1.112/24"
  interface = "enp0s4"

[zookeeper]
hosts = ["10.50.0.21:2181", "10.50.0.22:2181", "10.50.0.23:2181"]

[[vip]]
address = "10.50.1.100/24"
interface = "enp0s4"

[iscsi.discovery_auth]
userid = "discovery"
secret = "disc0very-Secr3t"

[[target]]
iqn = "iqn.2026-11.org.hacontrol.rig:array"
allowed_networks = ["{networks}"]
  [target.auth]
  userid = "array"
  secret = "Array1-Chap-01"
  mutual_userid = "array-target"
  mutual_secret = "Array1-Mutual-1"

  [[target.lun]]
  id = 0
  name = "ds0"
  device = "{disk0}"
  serial = "6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7"
  thin = true
  capacity_warn_percent = 80
{extra_lun}
  [[target.lun]]
  id = 1
  name = "ds1"
  device = "{disk1}"
  serial = "0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e"

  [[target.acl]]
  initiator = "iqn.2024-01.org.hacontrol:probe"

  [[target.acl]]
  initiator = "iqn.2024-01.org.hacontrol:probe2"

  [[target.acl]]
  initiator = "iqn.2024-01.org.hacontrol:esx"
    [target.acl.auth]
    userid = "esx01"
    secret = "Esx01-Chap-Key1"
    mutual_userid = "array-esx01"
    mutual_secret = "Esx01-Mutual-K1"
"""

# Runs in a controller with hacontrol's venv: one LioPort action, one JSON line on stdout, structlog on stderr.
GUEST = r'''
import json, sys, time
import structlog
structlog.configure(processors=[structlog.processors.JSONRenderer()],
                    logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from hacontrol.config import loads
from hacontrol.adapters.lio import LioPort
from hacontrol.adapters.lio.snapshot import read_snapshot
from hacontrol.adapters.network import Network
from hacontrol.core.model import AluaState
cfg_path, node, action, *rest = sys.argv[1:]
port = LioPort(loads(open(cfg_path).read()), node, network=Network(), background=False, capacity_every_s=0)
out = {}
t0 = time.monotonic()
try:
    for _ in range(3):
        out["configure"] = port.configure(time.monotonic() + 0.2)
        if "background" not in out["configure"]:
            break
    out["configure_s"] = round(time.monotonic() - t0, 3)
    t = time.monotonic()
    if action == "alua":
        port.set_alua(AluaState[rest[0]], AluaState[rest[1]], time.monotonic() + 5)
    elif action == "adopt":
        port.adopt_peer(int(rest[0]) if rest else 1, time.monotonic() + 5)
    elif action == "release":
        port.release_peer(time.monotonic() + 5)
    elif action == "up":
        port.bring_up_own(time.monotonic() + 5)
    out["action_s"] = round(time.monotonic() - t, 4)
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
port.observe()
dp = port.observe()  # the second one picks up the (inline) background reads: capacity, drift
out.update(configured=dp.configured, own=None if dp.own_group is None else dp.own_group.name,
           peer=None if dp.peer_group is None else dp.peer_group.name, own_ports_up=dp.own_ports_up,
           peer_hosted=dp.peer_ports_hosted, capacity=port.capacity_report())
snap = read_snapshot()
out["tpgs"] = {str(tag): {"enabled": t.enabled, "rtpi": t.rtpi, "portals": sorted(t.portals), "luns": sorted(t.luns)}
               for iqn, st in snap.targets.items() if iqn == "@IQN@" for tag, t in st.tpgs.items()}
out["serials"] = {n: s.serial for n, s in snap.storage.items() if n.startswith("hac-")}
print(json.dumps(out))
'''.replace("@IQN@", IQN)


# --- helpers -------------------------------------------------------------------------------------------------

def _setns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET, this thread only
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


class Initiator:
    """Runs initiator work on a thread that lives in the rig's namespace (sockets stay there)."""

    def __init__(self, namespace: str):
        self.pool = ThreadPoolExecutor(max_workers=1, initializer=_setns, initargs=(namespace,))

    def __call__(self, fn: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
        return self.pool.submit(fn, *args).result(timeout=timeout)


def session(portal: str, lun: int = 0, initiator: str = PROBE, creds: Credentials | None = TARGET_CHAP,
            isid: int | None = None) -> Session:
    """Logged in to ``portal``; with ``isid`` the same initiator port (I_T nexus) on every login."""
    s = Session(Target(IQN, lun, initiator, creds, isid=isid))
    s.connect(f"{portal}:3260", 5)
    return s


def ready_session(portal: str, lun: int, initiator: str, isid: int, creds: Credentials | None = TARGET_CHAP
                  ) -> Session:
    """``session`` with a fixed ISID, past the unit attentions a new nexus starts with."""
    s = session(portal, lun, initiator, creds, isid)
    clear_unit_attentions(s)
    return s


def clear_unit_attentions(s: Session) -> str:
    for _ in range(5):
        r = s.test_unit_ready()
        if r.sense is None or not r.sense.is_unit_attention():
            return r.describe()
    return r.describe()


def path_view(portal: str, lun: int = 0) -> dict[str, Any]:
    with session(portal, lun) as s:
        first = clear_unit_attentions(s)
        plain = s.execute(vaai.cdb_rtpg(extended=False), data_in_len=4096)
        ident = vaai.parse_device_identification(s.execute(vaai.cdb_inquiry(0x83), data_in_len=1024).data)
        groups = vaai.parse_rtpg(plain.data)[0]
        read = s.read16(0, 1, 512)
        luns = s.execute(vaai.cdb_report_luns(), data_in_len=4096)
        return {"tur": first, "rtpg_raw": plain.data.hex(), "naa": ident.naa, "rtpi": ident.relative_port,
                "group": ident.port_group, "groups": [(g.id, g.state_name, g.ports) for g in groups],
                "read": read.describe(), "report_luns": sorted(vaai.parse_report_luns(luns.data))}


def login_outcome(portal: str, initiator: str, creds: Credentials | None, lun: int = 0) -> str:
    try:
        with session(portal, lun, initiator, creds) as s:
            return "ok " + clear_unit_attentions(s)
    except LoginFailed as exc:
        return f"refused {exc.login_status if exc.login_status is not None else ''} {exc}"


# --- fixtures ----------------------------------------------------------------------------------------------

class Lio:
    """The adapter on both controllers, driven through GUEST."""

    def __init__(self, rig: Any):
        self.rig = rig
        self.logs: list[str] = []
        self.paths = {n: rig.jbod_paths(n) for n in rig.controllers}

    def config(self, networks: str = "10.50.1.0/24", extra_lun: str = "") -> str:
        paths = self.paths["ctrl-a"]
        return CONFIG.format(networks=networks, disk0=paths["disk0"], disk1=paths["disk1"], extra_lun=extra_lun)

    def push(self, text: str, nodes: tuple[str, ...] = ("ctrl-a", "ctrl-b"), path: str = "/root/lio-test.toml") -> None:
        for node in nodes:
            r = self.rig.ssh(node, f"umask 077; cat > {path}", input_text=text)
            assert r.returncode == 0, r.stderr

    def run(self, node: str, action: str, *args: str, path: str = "/root/lio-test.toml") -> dict[str, Any]:
        r = self.rig.ssh(node, f"{PY} - {path} {node} {action} {' '.join(args)}", input_text=GUEST, timeout=600)
        self.logs.append(r.stderr)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])


def _jbod_thin(rig: Any, on: bool) -> None:
    sys.path.insert(0, str(ROOT / "vagrant"))
    from rigctl import jbod

    daemon = rig.state.daemon_objects()["tgtd"]
    jbod.tgtadm(daemon, "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--params",
                f"thin_provisioning={int(on)}")
    for node in rig.controllers:
        rig.ssh(node, "for d in /sys/block/sd*; do echo 1 > $d/device/rescan; done; udevadm settle", timeout=60)


CLEAN = ("for a in 10.50.1.100 10.50.1.111 10.50.1.112; do ip addr del $a/24 dev enp0s4 2>/dev/null; done; "
         "nft delete table inet hacontrol_lio 2>/dev/null; true")
EMPTY = CONFIG.split("[[target]]", maxsplit=1)[0].replace('[iscsi.discovery_auth]\nuserid = "discovery"\n'
                                              'secret = "disc0very-Secr3t"\n', "")


def lio_environment(rig: Any) -> Iterator[Lio]:
    """Both controllers configured from CONFIG, ctrl-a Active/Optimized; everything removed afterwards."""
    from rigctl import agents

    agents.reset(rig)  # agents left running by earlier tests would hold the disks and re-create their LIO objects
    rig.provision()
    _jbod_thin(rig, True)
    env = Lio(rig)
    try:
        env.push(EMPTY, path="/root/lio-empty.toml")
        for node in rig.controllers:
            rig.ssh(node, CLEAN)
            env.run(node, "observe", path="/root/lio-empty.toml")  # removes any hacontrol objects left over
        env.push(env.config())
        for node in rig.controllers:
            out = env.run(node, "up")
            assert out.get("error") is None and out["configured"], out
        env.run("ctrl-a", "alua", "ACTIVE_OPTIMIZED", "STANDBY")
        env.run("ctrl-b", "alua", "STANDBY", "ACTIVE_OPTIMIZED")
        rig.ssh("ctrl-a", f"ip addr add {VIP}/24 dev enp0s4")  # what AddVips does on the active controller
        yield env
    finally:
        for node in rig.controllers:
            rig.ssh(node, CLEAN)
            try:
                env.run(node, "observe", path="/root/lio-empty.toml")
            except AssertionError:
                pass
        _jbod_thin(rig, False)


def secrets_in_logs(rig: Any, env: Lio) -> list[str]:
    """Secrets found in the adapter's logs of this run, the controllers' journals or kernel logs."""
    text = "\n".join(env.logs)
    for node in rig.controllers:
        text += rig.ssh(node, "journalctl -b --no-pager -q | tail -5000; dmesg").stdout
    return [s for s in SECRETS if s in text]
