"""The Pacemaker + corosync baseline of issue #9, on the same VM rig, with the same probe and the same faults.

What a storage admin would build with Debian's packages instead of hacontrol: corosync 3 (knet, two links:
interconnect and management, `two_node`), Pacemaker with resource-agents' iSCSITarget -> iSCSILogicalUnit
(lio-t) -> IPaddr2 in one group, and fence_scsi on the shelf's disks (unfencing). The LUN carries the
same serial as hacontrol's LUN 0; the probe initiator logs in through the group's virtual IP (one portal: the
resource agents move the whole target, they do not do ALUA).

Two profiles (PROFILES): ``default`` keeps every documented default (token 3 s, monitor intervals as the agents'
metadata suggest); ``tuned`` goes as far as corosync's and Pacemaker's documentation allow (token 1 s, monitors
every second, short stonith timeout).

Faults (the subset of tests/chaos/faults.py that both stacks can take alike):

- ``power-off``: the VM that runs the group is powered off;
- ``kill-agent``: kill -9 of the cluster software on that node (corosync: membership is what dies). The kernel
  keeps serving the target and the VIP, and nothing resets the node (a killed hacontrol agent leaves its
  hardware watchdog armed, which resets the controller);
- ``planned-switchover``: ``crm_resource --move`` of the group to the peer, under load.

    sudo .venv/bin/python -m tests.chaos.pacemaker --profile default --trials 9 [--out .chaos]
    sudo .venv/bin/python -m tests.chaos.pacemaker --uninstall      # stop Pacemaker, start hacontrol again

Each trial appends a record to OUT/baseline.jsonl (stack "pacemaker", the profile); `tests.chaos.campaign
--report OUT` puts them beside hacontrol's trials of OUT/trials.jsonl and prints the ratio table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "vagrant"))
sys.path.insert(0, str(ROOT))

from rigctl import Rig, agents  # noqa: E402 - after the sys.path lines
from rigctl.proc import RigError, wait_until  # noqa: E402

from tests.chaos.invariants import Budget, data, errors, pdl, resumed  # noqa: E402
from tests.chaos.rigchaos import ChaosError, Cluster, Mark, Probe, first_io_after, settle  # noqa: E402

GROUP = "iscsi"
MEMBERS = ("target", "lun0", "vip")  # the group's resources, in start order (resources_xml)
COROSYNC_CONF = "/etc/corosync/corosync.conf"
# fence_scsi fences with PREEMPT AND ABORT, which the rig's shelf (tgt) refuses as an illegal request; its
# documented sg_persist_path option points it at this shim, which sends PREEMPT instead (what hacontrol sends to
# that shelf too). Everything else reaches sg_persist unchanged.
SG_PERSIST_SHIM = "/usr/local/sbin/sg_persist-preempt"
SG_PERSIST_SHIM_TEXT = """#!/bin/bash
# hacontrol rig: tgt has no PREEMPT AND ABORT; send PREEMPT (fence_scsi's -A becomes -P).
args=()
for a in "$@"; do [[ $a == -A ]] && a=-P; args+=("$a"); done
exec /usr/bin/sg_persist "${args[@]}"
"""


@dataclass(frozen=True)
class Profile:
    name: str
    token_ms: int | None  # None: corosync's default (3000 ms in corosync 3)
    monitor_s: int  # monitor interval of the group's resources
    stonith_timeout_s: int | None  # None: Pacemaker's default (60 s)
    about: str


PROFILES = {
    "default": Profile("default", None, 10, None,
                       "documented defaults: token 3 s (consensus 3.6 s), monitors every 10 s"),
    "tuned": Profile("tuned", 1000, 1, 10,
                     "token 1 s (consensus 1.2 s), monitors every 1 s, stonith-timeout 10 s"),
}


def corosync_conf(rig: Any, profile: Profile) -> str:
    topo = rig.topology
    token = f"    token: {profile.token_ms}\n" if profile.token_ms else ""
    nodes = ""
    for nodeid, name in enumerate(rig.controllers, start=1):
        node = topo.nodes[name]
        nodes += (f"    node {{\n        name: {name}\n        nodeid: {nodeid}\n"
                  f"        ring0_addr: {node.address(topo.networks['ic'])}\n"
                  f"        ring1_addr: {node.address(topo.networks['mgmt'])}\n    }}\n")
    # corosync.conf wants one key per line (MACHINE.md / ANCHORS.md).
    return ("totem {\n    version: 2\n    cluster_name: hacrig\n    transport: knet\n"
            f"    crypto_cipher: none\n    crypto_hash: none\n{token}}}\n"
            f"nodelist {{\n{nodes}}}\n"
            "quorum {\n    provider: corosync_votequorum\n    two_node: 1\n}\n"
            "logging {\n    to_syslog: yes\n    timestamp: on\n}\n")


def _nv(owner: str, name: str, value: str) -> str:
    return f'<nvpair id="{owner}-{name}" name="{name}" value="{value}"/>'


def _primitive(rid: str, ra: str, params: dict[str, str], monitor_s: int) -> str:
    """An ocf:heartbeat resource with monitor, start and stop operations."""
    attrs = "".join(_nv(rid, k, v) for k, v in params.items())
    return (f'<primitive id="{rid}" class="ocf" provider="heartbeat" type="{ra}">'
            f'<instance_attributes id="{rid}-ia">{attrs}</instance_attributes>'
            f'<operations><op id="{rid}-monitor" name="monitor" interval="{monitor_s}s" timeout="20s"/>'
            f'<op id="{rid}-start" name="start" interval="0s" timeout="60s"/>'
            f'<op id="{rid}-stop" name="stop" interval="0s" timeout="60s"/></operations></primitive>')


def resources_xml(rig: Any, profile: Profile) -> str:
    """The CIB resources section: fence_scsi (with unfencing) and the group target -> lun0 -> vip.

    The VIP comes last, so an initiator never reaches a half-built target: with the VIP first (the obvious order,
    since the portal is bound to it), an initiator that logs in before the LU exists gets LIO's virtual LUN 0,
    read-only, and its writes fail with WRITE PROTECTED for as long as targetcli takes (measured: 1,264 failed
    writes in one planned move). The portal binds the absent VIP thanks to net.ipv4.ip_nonlocal_bind=1
    (the rig image sets it, as it does for hacontrol's portals)."""
    disks = agents._disks(rig)
    iface = agents.san_interface(rig, rig.controllers[0])
    vip = agents._addr(rig, agents.VIP_HOST)
    address, prefix = vip.split("/")
    fence = ('<primitive id="fence-scsi" class="stonith" type="fence_scsi">'
             '<instance_attributes id="fence-scsi-ia">'
             + _nv("fence-scsi", "devices", ",".join(disks))
             + _nv("fence-scsi", "pcmk_host_list", " ".join(rig.controllers))
             + _nv("fence-scsi", "sg_persist_path", SG_PERSIST_SHIM)
             + '</instance_attributes><meta_attributes id="fence-scsi-meta">'
             + _nv("fence-scsi-meta", "provides", "unfencing")
             + '</meta_attributes><operations><op id="fence-scsi-monitor" name="monitor" interval="60s"/>'
             '</operations></primitive>')
    group = (f'<group id="{GROUP}">'
             + _primitive("target", "iSCSITarget", {"implementation": "lio-t", "iqn": agents.IQN,
                                                    "portals": f"{address}:3260",
                                                    "allowed_initiators": agents.PROBE_INITIATOR}, profile.monitor_s)
             + _primitive("lun0", "iSCSILogicalUnit", {"implementation": "lio-t", "target_iqn": agents.IQN,
                                                       "lun": "0", "path": disks[0], "scsi_sn": agents._serial(0),
                                                       "allowed_initiators": agents.PROBE_INITIATOR},
                          profile.monitor_s)
             + _primitive("vip", "IPaddr2", {"ip": address, "cidr_netmask": prefix, "nic": iface}, profile.monitor_s)
             + "</group>")
    return f"<resources>{fence}{group}</resources>"


def _quorate_dc(doc: ET.Element | None) -> bool:
    """crm_mon's XML says: a designated controller, in a partition with quorum."""
    dc = doc.find("summary/current_dc") if doc is not None else None
    return dc is not None and dc.get("present") == "true" and dc.get("with_quorum") == "true"


class PacemakerCluster:
    """Pacemaker on the rig's two controllers (hacontrol's agents stopped and their leftovers cleared)."""

    def __init__(self, rig: Any, profile: Profile):
        self.rig = rig
        self.profile = profile
        self.answered = rig.controllers[0]  # ask this one first: a powered-off node costs an ssh timeout
        self.started: dict[str, float] = {}  # node -> when we last started its stack (monotonic)

    # --- state -------------------------------------------------------------------------------------
    def peer(self, node: str) -> str:
        return next(n for n in self.rig.controllers if n != node)

    def crm_mon(self) -> ET.Element | None:
        """crm_mon's XML from a controller in a quorate partition with a DC (a node whose corosync was killed
        may still answer, with a stale view), else from any controller that answers, else None."""
        fallback = None
        for node in sorted(self.rig.controllers, key=lambda n: n != self.answered):
            out = self.rig.ssh(node, "crm_mon --one-shot --output-as=xml 2>/dev/null", timeout=20)
            if out.returncode != 0 or not out.stdout.strip():
                continue
            try:
                doc = ET.fromstring(out.stdout)
            except ET.ParseError:
                continue
            if _quorate_dc(doc):
                self.answered = node
                return doc
            fallback = fallback if fallback is not None else doc
        return fallback

    def state(self) -> dict[str, Any]:
        doc = self.crm_mon()
        if doc is None:
            return {"online": [], "group_on": [], "failed": True}
        online = [n.get("name") for n in doc.iter("node") if n.get("online") == "true" and n.get("name")]
        running = {rid: set() for rid in MEMBERS}  # resource -> nodes where it is started
        for res in doc.iter("resource"):
            if res.get("id") in running and res.get("role") == "Started" and res.get("active") == "true":
                running[res.get("id", "")].update(n.get("name", "") for n in res.iter("node"))
        group_on = sorted(set.intersection(*running.values()))
        return {"online": online, "group_on": group_on, "failed": doc.find(".//failure") is not None}

    def active(self) -> str | None:
        on = self.state()["group_on"]
        return on[0] if len(on) == 1 else None

    def healthy(self) -> str | None:
        st = self.state()
        if sorted(st["online"]) == sorted(self.rig.controllers) and len(st["group_on"]) == 1 and not st["failed"]:
            return st["group_on"][0]
        return None

    # --- install / restore / uninstall --------------------------------------------------------------
    def install(self) -> str:
        """Stop hacontrol, clear its leftovers, start corosync + Pacemaker with the profile, load the CIB."""
        agents.reset(self.rig)
        conf = corosync_conf(self.rig, self.profile)
        for node in self.rig.controllers:
            self._stop_stack(node)
            self.rig.ssh(node, f"cat > {SG_PERSIST_SHIM} && chmod 0755 {SG_PERSIST_SHIM}",
                         input_text=SG_PERSIST_SHIM_TEXT, check=True, timeout=60)
            self.rig.ssh(node, f"cat > {COROSYNC_CONF} && rm -f /var/lib/pacemaker/cib/cib* "
                               "/var/lib/pacemaker/pengine/* && sync", input_text=conf, check=True, timeout=60)
        for node in self.rig.controllers:
            self._start_stack(node)
        # The first DC election waits dc-deadtime (20 s); properties then resources.
        wait_until("pacemaker: a designated controller", lambda: _quorate_dc(self.crm_mon()), timeout=120)
        props = {"stonith-enabled": "true", "cluster-name": "hacrig"}
        if self.profile.stonith_timeout_s:
            props["stonith-timeout"] = f"{self.profile.stonith_timeout_s}s"
        node = self.rig.controllers[0]
        cmds = [f"crm_attribute --type crm_config --name {k} --update {v}" for k, v in props.items()]
        cmds.append("crm_attribute --type rsc_defaults --name resource-stickiness --update 100")
        cmds.append("cibadmin --replace --scope resources --xml-pipe")
        self.rig.ssh(node, " && ".join(cmds), input_text=resources_xml(self.rig, self.profile), check=True,
                     timeout=120)
        return self.restore()

    def _start_stack(self, node: str) -> None:
        self.started[node] = time.monotonic()
        self.rig.ssh(node, "systemctl reset-failed corosync pacemaker 2>/dev/null; "
                           "systemctl start corosync && systemctl start pacemaker", check=True, timeout=120)

    def _stop_stack(self, node: str) -> None:
        self.rig.ssh(node, "systemctl stop pacemaker corosync; pkill -9 -x corosync; "
                           "pkill -9 -f '^/usr/lib/pacemaker/'; pkill -9 -x pacemakerd; true", timeout=120)

    def _clear_orphans(self, node: str) -> None:
        """What a node whose cluster software died leaves in its kernel: the target and the VIP."""
        iface = agents.san_interface(self.rig, node)
        vip = agents._addr(self.rig, agents.VIP_HOST)
        self.rig.ssh(node, f"{agents.CLEAR_LIO}; ip addr del {vip} dev {iface} 2>/dev/null; true", timeout=120)

    def restore(self, timeout_s: float = 300) -> str:
        """Heal, bring every controller back into the cluster, clear failures, wait for the group on one node.

        Looks again every 15 s: a node can leave after the first look (a stop still running, a reset)."""
        self.rig.heal()
        active = self.healthy()
        if active:
            return active
        self._rejoin()
        return settle(self.healthy, lambda _left: self._rejoin(), kick_every_s=15, timeout_s=timeout_s,
                      what="pacemaker", detail=self.state)

    def _rejoin(self) -> None:
        """Every controller that is not online in the cluster's (quorate) view: VM up, the stack stopped, what
        it left in the kernel cleared, the stack started. Then clear the move constraint, failed fencing
        (as an admin would, once the node is really back) and failed actions."""
        rig = self.rig
        online = set(self.state()["online"])
        for node in rig.controllers:
            # A node we started less than a minute ago may still be joining (TCG): leave it alone.
            if node not in online and time.monotonic() - self.started.get(node, -1e9) > 60:
                rig.ensure_running(node)
                self._stop_stack(node)
                self._clear_orphans(node)
                self._start_stack(node)
        rig.ssh(self.answered, f"crm_resource --clear --resource {GROUP} 2>/dev/null; "
                               "stonith_admin --cleanup --history '*' >/dev/null 2>&1; "
                               "crm_resource --cleanup >/dev/null 2>&1; true", timeout=60)

    def uninstall(self) -> str:
        """Stop Pacemaker everywhere, clear what it left (LIO, VIP, fence_scsi's registrations), and hand the
        rig back to hacontrol: configuration deployed, one active and a ready standby (returns the active).
        The first active power-fences a peer that is not in the cluster yet: Cluster.restore powers it on."""
        for node in self.rig.controllers:
            self.rig.ensure_running(node)
            self._stop_stack(node)
            self._clear_orphans(node)
        agents.reset(self.rig)  # also clears every registration and the reservation on the shelf
        agents.deploy(self.rig, agents.config_text(self.rig))
        agents.start(self.rig)
        return Cluster(self.rig).restore()


# --- faults ---------------------------------------------------------------------------------------
def _moved(pc: PacemakerCluster, to: str, timeout_s: float) -> None:
    with contextlib.suppress(RigError):  # the trial's verdict (I/O pause) says what that cost
        wait_until(f"pacemaker: the group on {to}", lambda: pc.active() == to, timeout=timeout_s)


def power_off(pc: PacemakerCluster, active: str, m: Mark) -> None:
    m.now()
    pc.rig.power_off(active)
    _moved(pc, pc.peer(active), 120)


def kill_agent(pc: PacemakerCluster, active: str, m: Mark) -> None:
    m.now()
    pc.rig.ssh(active, "pkill -9 -x corosync", timeout=30, check=True)
    _moved(pc, pc.peer(active), 120)


def planned(pc: PacemakerCluster, active: str, m: Mark) -> None:
    m.now()
    out = pc.rig.ssh(pc.peer(active), f"crm_resource --move --resource {GROUP} --node {pc.peer(active)}",
                     timeout=60)
    m.notes.append((out.stdout + out.stderr).strip()[-300:])
    _moved(pc, pc.peer(active), 60)
    time.sleep(2.0)


FAULTS = {"power-off": power_off, "kill-agent": kill_agent, "planned-switchover": planned}
BUDGET = Budget(io_pause_s=120.0, epoch_changes=(0, 99))  # the baseline is measured, not held to our budget


JOURNAL_PHASES = (  # phase, pattern over `journalctl -o short-unix` lines; {old}/{new}: the nodes before/after
    ("detect", r"Node {old} state is now lost"),
    ("fenced", r"Operation '(?:off|reboot)' targeting {old} .*: OK"),
    ("alua", r"Result of start operation for lun0 on {new}: OK"),  # the LU is served: ALUA's equivalent here
    ("vips", r"Result of start operation for vip on {new}: OK"),
)


def phases_from_journal(text: str, old: str, new: str, clock_offset_s: float, fault_wall: float
                        ) -> dict[str, float | None]:
    """Seconds from the fault to each phase, from the new active's journal (its clock minus clock_offset_s is
    the host's); the first matching line after the fault counts. A phase that did not happen stays None."""
    out: dict[str, float | None] = {name: None for name, _ in JOURNAL_PHASES}
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        try:
            t = float(stamp) - clock_offset_s - fault_wall
        except ValueError:
            continue
        if t < -0.5:
            continue
        for name, pattern in JOURNAL_PHASES:
            if out[name] is None and re.search(pattern.format(old=re.escape(old), new=re.escape(new)), rest):
                out[name] = round(t, 3)
    return out


def journal_phases(pc: PacemakerCluster, old: str, new: str | None, mark: Mark) -> dict[str, float | None]:
    if not new:
        return {name: None for name, _ in JOURNAL_PHASES}
    before = time.time()
    guest_now = float(pc.rig.ssh(new, "date +%s.%N", timeout=20, check=True).stdout)
    offset = guest_now - (before + time.time()) / 2  # ssh over the rig's multiplexed connection: ~0.1 s round trip
    since = int(mark.wall + offset) - 5
    text = pc.rig.ssh(new, f"journalctl --no-pager -o short-unix --since @{since} -u pacemaker -u corosync",
                      timeout=60).stdout
    return phases_from_journal(text, old, new, offset, mark.wall)


def run_trial(pc: PacemakerCluster, seed: int, index: int, names: list[str], workdir: Path) -> dict[str, Any]:
    rng = random.Random(f"pcmk:{seed}:{index}")
    name = sorted(names)[index % len(names)]  # the faults take turns: equal counts per fault; timings from rng
    started = time.monotonic()
    active = pc.restore()
    vip = agents._addr(pc.rig, agents.VIP_HOST).split("/")[0]
    probe = Probe(pc.rig, workdir, f"pcmk-{pc.profile.name}-s{seed}-t{index}").start(portals=[f"{vip}:3260"])
    time.sleep(rng.uniform(2.0, 4.0))
    mark = Mark(name)
    try:
        FAULTS[name](pc, active, mark)
    except Exception as exc:
        mark.notes.append(f"fault error: {type(exc).__name__}: {exc}")
    time.sleep(3.0)
    rep = probe.stop()
    violations = pdl(rep) + data(rep) + errors(rep, BUDGET) + resumed(rep, BUDGET)
    after = pc.active()
    phases: dict[str, float | None] = {}
    try:
        phases = journal_phases(pc, active, after, mark)
    except (RigError, ValueError) as exc:
        mark.notes.append(f"no phases from the journal: {exc}")
    phases["first_io"] = first_io_after(rep, mark)
    return {
        "stack": "pacemaker", "profile": pc.profile.name, "seed": seed, "index": index, "fault": name,
        "notes": mark.notes, "active_before": active, "active_after": after,
        "io_pause_s": rep.get("io_pause_s"), "io_errors": rep.get("io_errors"),
        "writes_acknowledged": rep.get("writes_acknowledged"), "writes_lost": rep.get("writes_lost"),
        "scsi_conditions": rep.get("scsi_conditions"), "phases": phases,
        "violations": violations, "duration_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="default")
    ap.add_argument("--trials", type=int, default=9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--first", type=int, default=0, help="index of the first trial (to continue a seed)")
    ap.add_argument("--faults", default=",".join(sorted(FAULTS)), help="comma-separated subset")
    ap.add_argument("--out", type=Path, default=ROOT / ".chaos")
    ap.add_argument("--no-install", action="store_true", help="Pacemaker already runs with this profile")
    ap.add_argument("--keep", action="store_true", help="leave Pacemaker running afterwards (default: hand the "
                                                        "rig back to hacontrol)")
    ap.add_argument("--uninstall", action="store_true", help="only stop Pacemaker and start hacontrol again")
    args = ap.parse_args(argv)
    names = [n for n in args.faults.split(",") if n]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        ap.error(f"--faults: unknown {unknown}; the baseline takes {', '.join(sorted(FAULTS))}")
    pc = PacemakerCluster(Rig(quiet=True), PROFILES[args.profile])
    if args.uninstall:
        pc.uninstall()
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        if not args.no_install:
            print(f"installing Pacemaker ({pc.profile.about}) on the rig: on {pc.install()}", flush=True)
        for i in range(args.first, args.first + args.trials):
            result = run_trial(pc, args.seed, i, names, args.out / "probes")
            with open(args.out / "baseline.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
            print(f"pacemaker/{pc.profile.name} trial {i} {result['fault']}: first good I/O "
                  f"{result['phases']['first_io']} s, pause {result['io_pause_s']} s, errors {result['io_errors']}, "
                  f"lost {result['writes_lost']}"
                  + (f", {'; '.join(result['violations'])}" if result["violations"] else ""), flush=True)
    except (ChaosError, RigError) as exc:
        print(f"baseline stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            pc.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
