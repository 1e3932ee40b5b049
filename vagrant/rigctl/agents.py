"""hacontrol itself on the rig: its configuration, the agents (systemd units in the controllers), and hactl.

`vagrant/rig agents config` prints the hacontrol.toml this module generates from the rig's topology:

- the two controllers with their SAN interface (its name is read from the guest: both VMs have the same PCI
  layout, so the same name), their static SAN addresses, and one managed **portal** each (10.50.1.21 for
  ctrl-a, .22 for ctrl-b: the addresses port takeover moves);
- the cluster discovery address (a VIP, 10.50.1.100) that always lives on the active controller;
- ZooKeeper: the three members on the host side;
- one target with the shelf's disks as LUNs (the same by-id paths on both controllers), ACLs for the
  initiator VM and for the host-side probe, the SAN network allowed;
- fencing: SCSI-3 PR on the shelf's disks, then power through the peer VM's "power switch" (a QMP monitor
  on the management network, see launch_qemu.power_port);
- the peer link (unless ``peer_link=False``): heartbeats on the interconnect (ic) and the SAN, so a dead
  active is powered off and taken over before its session expires, and an active cut from ZooKeeper keeps
  serving while its peer promises not to claim.

hactl runs on the host *inside* the rig namespace (ZooKeeper is reachable there), never in the root one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .proc import RigError, in_netns

REPO = Path(__file__).resolve().parents[2]
PORTAL_HOST = {"ctrl-a": 21, "ctrl-b": 22}
VIP_HOST = 100
IQN = "iqn.2024-01.org.hacontrol.rig:array"
PROBE_INITIATOR = "iqn.2024-01.org.hacontrol:probe"
POWER_PORT_BASE = 4400
GUEST_CONFIG = "/etc/hacontrol/hacontrol.toml"
ZK_CHROOT = "/hacontrol/rig"
# TCG guests are slow: a longer session and tick than hacontrol's defaults (hactl config check holds them to the
# same safety rules: demote deadline + tick + 2 steps before the watchdog, watchdog before expiry).
# watchdog_margin_s 1.0: a 2.0 s watchdog (a whole second count, so the device does not round it down) and a
# kick allowed up to 1.0 s after a confirmation, for the TCG guests' slow round trips; slack 0 (hactl config check)
TIMING = {"session_timeout_s": 3.0, "loop_interval_s": 0.2, "demote_deadline_s": 1.2, "watchdog_margin_s": 1.0,
          "operation_timeout_s": 0.3, "fence_retry_s": 1.0, "standby_settle_s": 0.5, "switchover_timeout_s": 30.0,
          "startup_grace_s": 8.0, "heartbeat_interval_s": 0.1}
# Silence on every path for this long counts as a dead peer. A TCG guest stalls for a second and more while
# the other VM boots (its agent missed 2 s watchdogs then, seen in the chaos runs), so the rig waits longer
# than the 0.3 s default, and longer still on a slower host.
PEER_DEAD_AFTER_S = 1.0
PEER_LINK_KEY = "rig-peer-link-key-not-a-secret"


def timing_dials(speed_factor: float, max_session_ms: int) -> dict[str, float]:
    """The rig's timing dials that follow the measured speed factor.

    On a slower host every stall of a guest is longer (the active starves while its peer boots), so the dials
    that a stall may hit follow the factor: the session (and with it the lease deadline, the watchdog margin
    and the operation timeout, keeping their ratios, so `hactl config check` accepts them), the silence that
    counts as a dead peer, and the start grace (a controller that finds no peer waits startup_grace_s before it
    claims alone and power-fences the absent one). The cadences (loop, heartbeats) stay. The session may not
    outgrow the ensemble's maxSessionTimeout (the agents would refuse the shorter session the servers grant),
    so that stretch stops there."""
    factor = max(1.0, speed_factor)
    slow = min(factor, max_session_ms / 1000 / TIMING["session_timeout_s"])
    dials = {k: round(TIMING[k] * slow, 2)
             for k in ("session_timeout_s", "demote_deadline_s", "watchdog_margin_s", "operation_timeout_s")}
    dials["startup_grace_s"] = round(TIMING["startup_grace_s"] * factor, 1)
    dials["peer_dead_after_s"] = round(PEER_DEAD_AFTER_S * factor, 2)
    return dials


def san_interface(rig: Any, node: str) -> str:
    """The guest's name for its SAN NIC (matched by the MAC the rig gave it)."""
    topo = rig.topology
    mac = topo.nodes[node].mac(topo.networks["san"]).lower()
    out = rig.ssh(node, "ip -o link show", timeout=30, check=True).stdout
    for line in out.splitlines():
        if mac in line.lower():
            return line.split(":")[1].strip().split("@")[0]
    raise RigError(f"{node}: no interface with the SAN MAC {mac}")


def _addr(rig: Any, host: int) -> str:
    net = rig.topology.networks["san"]
    return f"{net.cidr.network_address + host}/{net.cidr.prefixlen}"


def config_text(rig: Any, *, port_takeover: bool = True, timing: dict[str, float] | None = None,
                power_fencing: bool = True, watchdog: bool = True, peer_link: bool | None = None) -> str:
    """``peer_link`` None: on unless HACONTROL_RIG_PEER_LINK=0 (the session-expiry path, for comparisons);
    it needs power fencing (a fast takeover powers the silent peer off)."""
    if peer_link is None:
        peer_link = os.environ.get("HACONTROL_RIG_PEER_LINK", "1") != "0"
    peer_link = peer_link and power_fencing
    topo = rig.topology
    names = [n.name for n in topo.controllers]
    iface = san_interface(rig, names[0])
    lines = ["[cluster]", 'name = "rig"', 'backend = "lio"', f"port_takeover = {str(port_takeover).lower()}", ""]
    disks = _disks(rig)
    for i, name in enumerate(names, start=1):
        node = topo.nodes[name]
        link = [node.address(topo.networks["ic"]), node.address(topo.networks["san"])]
        lines += ["[[node]]", f'name = "{name}"', f"id = {i}", f'address = "{node.address(topo.networks["mgmt"])}"',
                  *([f"peer_link = {json.dumps(link)}"] if peer_link else []),
                  "  [[node.interface]]", f'  name = "{iface}"',
                  f'  address = "{node.address(topo.networks["san"])}/{topo.networks["san"].prefix}"',
                  "  [[node.portal]]", f'  address = "{_addr(rig, PORTAL_HOST[name])}"', f'  interface = "{iface}"',
                  "  [[node.fencing]]", '  method = "scsi_pr"',
                  f"  devices = [{', '.join(json.dumps(d) for d in disks)}]", "  timeout_s = 10.0"]
        if power_fencing:
            lines += ["  [[node.fencing]]", '  method = "qmp"',
                      f'  socket = "tcp:{topo.networks["mgmt"].host}:{POWER_PORT_BASE + node.host_id}"',
                      "  timeout_s = 10.0"]
        lines.append("")
    hosts = ", ".join(json.dumps(f"{m}:{topo.zookeeper.client_port}") for m in topo.zookeeper.members)
    lines += ["[zookeeper]", f"hosts = [{hosts}]", f'chroot = "{ZK_CHROOT}"', "", "[timing]"]
    grace = timing_dials(rig.speed_factor, topo.zookeeper.max_session_ms)
    lines += [f"{k} = {v}" for k, v in {**TIMING, **grace, **(timing or {})}.items()]
    if peer_link:
        lines += ["", "[peer_link]", f'key = "{PEER_LINK_KEY}"']
    lines += ["", "[[vip]]", f'address = "{_addr(rig, VIP_HOST)}"', f'interface = "{iface}"', "",
              "[[target]]", f'iqn = "{IQN}"', f'allowed_networks = ["{topo.networks["san"].cidr}"]']
    for lun, disk in enumerate(disks):
        lines += ["  [[target.lun]]", f"  id = {lun}", f'  name = "disk{lun}"', f'  device = "{disk}"',
                  f'  serial = "{_serial(lun)}"', "  thin = false"]
    for iqn in (PROBE_INITIATOR, *(topo.node_iqn(n) for n in topo.initiators)):
        lines += ["  [[target.acl]]", f'  initiator = "{iqn}"']
    device = "/dev/watchdog" if watchdog else ""
    lines += ["", "[watchdog]", f'device = "{device}"', "", "[metrics]", 'listen = "0.0.0.0:9475"']
    return "\n".join(lines) + "\n"


def _serial(lun: int) -> str:
    return f"5269674c554e{lun:02x}a1b2c3d4e5f60718293a4b5c"[:32]


def _disks(rig: Any) -> list[str]:
    views = rig.jbod
    first = next(iter(views.values()), [])
    paths = [d["by_id"] for d in first if d.get("by_id")]
    if not paths:
        raise RigError("the rig has no shelf disks recorded (was it brought up with `vagrant/rig up`?)")
    return paths


def deploy(rig: Any, text: str) -> None:
    """Install the configuration on both controllers and check it there (the guests validate it themselves)."""
    check = subprocess.run([python(), "-m", "hacontrol.cli.main", "config", "check", "/dev/stdin"], input=text,
                           capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    if check.returncode != 0:
        raise RigError(f"the generated configuration is refused on the host:\n{check.stderr.strip()[-2000:]}")
    for node in rig.controllers:
        rig.ssh(node, f"install -d -m 0750 /etc/hacontrol && cat > {GUEST_CONFIG} && chmod 0600 {GUEST_CONFIG} && sync",
                input_text=text, check=True, timeout=60)
        out = rig.ssh(node, f"/opt/hacontrol/venv/bin/hactl config check {GUEST_CONFIG}", timeout=rig.scaled(120))
        if out.returncode != 0:
            raise RigError(f"{node}: the generated configuration is refused:\n{out.stderr.strip()[-2000:]}")
    local = rig.paths.run / "hacontrol.toml"
    local.write_text(text)


# While the rig's agents are meant to run they are enabled at boot, as on a production controller: a controller
# its hardware watchdog reset (TCG starvation) or that was power-fenced and powered on comes back with its agent.
# Stopped (agents.stop, agents.reset: tests that drive LIO and the shelf themselves) they are disabled again.
# --no-reload: enabling only links the unit for the next boot. Without it every restore made systemd reload its
# whole configuration on both controllers: 4.3-5.9 s of a TCG guest's only vCPU in the guests' journals, the
# serving controller's included.
ENABLE = "systemctl enable --quiet --no-reload hacontrol.service"


def start(rig: Any) -> None:
    """Start both agents at once, as a cluster's controllers boot, and wait for their READY (a session and a
    role); the limit follows the speed factor. One after the other, the first agent's start grace could run out
    before the second had a session, and the first would then claim alone and power-fence its peer mid-start."""
    cmd = (f"systemctl daemon-reload && {ENABLE} && systemctl reset-failed hacontrol.service; "
           "systemctl start hacontrol.service")
    with ThreadPoolExecutor(max_workers=len(rig.controllers)) as pool:
        starts = [pool.submit(rig.ssh, node, cmd, check=True, timeout=rig.scaled(120)) for node in rig.controllers]
        for started in starts:
            started.result()


def start_no_wait(rig: Any, node: str) -> None:
    """Ask systemd to start the agent and return at once (a restore polls the cluster's health instead of
    holding an ssh session open for a start that may queue behind a booting controller's jobs)."""
    rig.ssh(node, f"{ENABLE}; systemctl reset-failed hacontrol.service; systemctl start --no-block hacontrol.service",
            timeout=rig.scaled(30))


def stop(rig: Any) -> None:
    for node in rig.controllers:
        rig.ssh(node, "systemctl disable --quiet hacontrol.service; systemctl stop hacontrol.service",
                timeout=rig.scaled(120))


CLEAR_LIO = "python3 -c 'from rtslib_fb import RTSRoot; RTSRoot().clear_existing(confirm=True)'"


def reset(rig: Any) -> None:
    """Stop the agents and remove what they left on the controllers (LIO objects, portal addresses and VIPs,
    the nftables table) and on the shelf (reservations and registrations), so tests that drive LIO or the
    shelf themselves start clean. A controller a fault left paused or powered off is brought back first."""
    rig.heal()
    for node in rig.controllers:
        rig.ensure_running(node)
    stop(rig)
    for node in rig.controllers:  # a controller reset while its agent stopped (TCG starvation) is back before we go on
        rig.ensure_running(node)
    addresses = [_addr(rig, h) for h in (*PORTAL_HOST.values(), VIP_HOST)]
    for node in rig.controllers:
        iface = san_interface(rig, node)
        dels = "; ".join(f"ip addr del {a} dev {iface} 2>/dev/null" for a in addresses)
        # the initiators' reservations the agents carried: the directory the agent served (its mounts, bounded)
        # and its copy under /run, LIO's APTPL files beneath, which epoch a controller loaded
        prs = ("d=$(cat /sys/kernel/config/target/dbroot 2>/dev/null || echo /var/target)/pr; "
               "for i in 1 2 3 4; do umount -l $d 2>/dev/null || break; done; "
               "rm -rf $d/aptpl_* /run/hacontrol/*.pr /run/hacontrol/*.reservations-loaded-epoch")
        nft = "; ".join(f"nft delete table inet {t} 2>/dev/null" for t in ("hacontrol_lio", "hacontrol_pr_load"))
        rig.ssh(node, f"{CLEAR_LIO}; {dels}; {prs}; {nft}; true", timeout=rig.scaled(120))
    clear_published_reservations(rig)
    node = rig.controllers[0]
    disks = " ".join(json.dumps(d) for d in _disks(rig))
    rig.ssh(node, f"/opt/hacontrol/venv/bin/python -m hacontrol.adapters.fencing.prtool clear --epoch 1 {disks}",
            timeout=rig.scaled(120))


_CLEAR_RESERVATIONS = '''
import sys
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1], timeout=10)
zk.start(timeout=20)
try:
    zk.delete(sys.argv[2], recursive=True)
except Exception as exc:  # NoNodeError: nothing published yet
    print(type(exc).__name__)
finally:
    zk.stop()
'''


def clear_published_reservations(rig: Any) -> None:
    """Remove the initiators' reservations the agents published to ZooKeeper: a later test's takeover would
    otherwise load an earlier test's guest registrations into LIO."""
    topo = rig.topology
    hosts = ",".join(f"{m}:{topo.zookeeper.client_port}" for m in topo.zookeeper.members)
    argv = in_netns(rig.namespace, [python(), "-c", _CLEAR_RESERVATIONS, hosts, f"{ZK_CHROOT}/reservations"])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RigError(f"clearing the published reservations in ZooKeeper failed: {out.stderr.strip()[-500:]}")


def hactl(rig: Any, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """hactl on the host, inside the rig namespace, with the configuration deployed to the controllers."""
    config = rig.paths.run / "hacontrol.toml"
    if not config.exists():
        raise RigError("no hacontrol configuration deployed: run `vagrant/rig agents deploy` first")
    argv = in_netns(rig.namespace, [python(), "-m", "hacontrol.cli.main", *args, "--config", str(config)])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)


def python() -> str:
    """An interpreter with hacontrol's dependencies: $HACONTROL_PYTHON, the repo's .venv, or this one."""
    for candidate in (os.environ.get("HACONTROL_PYTHON", ""), str(REPO / ".venv" / "bin" / "python")):
        if candidate and Path(candidate).exists():
            return candidate
    return sys.executable


def status(rig: Any) -> dict[str, Any]:
    out = hactl(rig, "status", "--json", timeout=30)
    if out.returncode != 0:
        raise RigError(f"hactl status: {out.stderr.strip()}")
    return json.loads(out.stdout)
