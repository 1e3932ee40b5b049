"""`rig smoke`: is the rig what later tests assume? Every check is a named boolean plus its evidence.

Checks: LIO modules loaded; rtslib creates and deletes a throwaway target on each controller; each
controller sets its own relative target port id; the initiator side (the host namespace with libiscsi, and
the initiator VM with open-iscsi) reaches both controllers' portals and reads the two RTPIs back; the shelf
disks appear on both controllers with the same WWN; SCSI-3 PR register/read-keys works from both; ZooKeeper
has a quorum and both controllers can open a session.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import zookeeper
from .config import Node
from .nodes import SCRIPTS, VENV, jbod_disks
from .proc import RigError, run

if TYPE_CHECKING:
    from .driver import Rig

MODULES = ("target_core_mod", "iscsi_target_mod", "target_core_iblock", "target_core_file", "iscsi_tcp",
           "dm_multipath")
PR_KEY_BASE = 0x534D4B00  # "SMK\0" + host id: recognisable in a PR key listing as the smoke check's


def smoke_iqn(rig: Rig, node: Node) -> str:
    return f"{rig.topology.iqn_prefix}:smoke-{node.name}"


def per_node(nodes: list[Node], fn: Callable[[Node], Any]) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = {node.name: pool.submit(fn, node) for node in nodes}
    return {name: f.result() for name, f in futures.items()}


def run_smoke(rig: Rig) -> dict:
    t0 = time.monotonic()
    checks: dict[str, bool] = {}
    details: dict[str, Any] = {}

    def check(name: str, fn: Callable[[], tuple[bool, Any]]) -> None:
        try:
            ok, evidence = fn()
        except (RigError, ValueError, KeyError, json.JSONDecodeError) as exc:
            ok, evidence = False, f"error: {exc}"
        checks[name] = bool(ok)
        details[name] = evidence
        rig.log("smoke.check", check=name, ok=bool(ok))

    check("lio_loaded", lambda: _modules(rig))
    check("lio_target_created", lambda: _lio_setup(rig))
    check("distinct_rtpi", lambda: _distinct_rtpi(details.get("lio_target_created")))
    check("initiator_host_reaches_controllers", lambda: _host_initiator(rig))
    if rig.topology.initiators and rig.has_initiator_vm:
        check("initiator_vm_reaches_controllers", lambda: _vm_initiator(rig))
    check("lio_target_deleted", lambda: _lio_teardown(rig))
    check("jbod_same_wwn", lambda: _jbod(rig))
    check("scsi_pr_both_controllers", lambda: _pr(rig, details.get("jbod_same_wwn")))
    check("zookeeper_quorum", lambda: _zk_quorum(rig))
    check("zookeeper_from_controllers", lambda: _zk_from_guests(rig))
    check("hacontrol_installed", lambda: _hacontrol(rig))
    state = rig.state
    return {"ok": all(checks.values()), "launcher": state.launcher if state else None,
            "up_seconds": state.up_seconds if state else None, "smoke_seconds": round(time.monotonic() - t0, 1),
            "checks": checks, "details": details}


def _modules(rig: Rig) -> tuple[bool, Any]:
    loaded = per_node(rig.topology.controllers, lambda n: set(
        line.split()[0] for line in rig.ssh(n.name, "cat /proc/modules", timeout=30, check=True).stdout.splitlines()))
    missing = {name: sorted(set(MODULES) - mods) for name, mods in loaded.items()}
    return not any(missing.values()), {"missing": missing}


def _lio_setup(rig: Rig) -> tuple[bool, Any]:
    script = (SCRIPTS / "lio_smoke.py").read_text()

    def setup(node: Node) -> dict:
        san = node.address(rig.topology.networks["san"])
        rtpi = rig.topology.controllers.index(node) + 1
        rig.ssh(node.name, f"python3 - teardown {smoke_iqn(rig, node)}", input_text=script, timeout=60, check=True)
        out = rig.ssh(node.name, f"python3 - setup {smoke_iqn(rig, node)} {san} {rtpi}", input_text=script,
                      timeout=90, check=True).stdout
        return {"wanted_rtpi": rtpi, **json.loads(out.strip().splitlines()[-1])}

    results = per_node(rig.topology.controllers, setup)
    return all(r.get("enabled") for r in results.values()), results


def _distinct_rtpi(setup: Any) -> tuple[bool, Any]:
    if not isinstance(setup, dict):
        return False, "no target was created"
    rtpis = {name: r.get("rtpi") for name, r in setup.items()}
    as_wanted = all(r.get("rtpi") == r.get("wanted_rtpi") for r in setup.values())
    refused_while_enabled = all(r.get("rtpi_write_enabled") != "ok" for r in setup.values())
    ok = as_wanted and len(set(rtpis.values())) == len(rtpis)
    return ok, {"rtpi": rtpis, "write_refused_while_tpg_enabled": refused_while_enabled}


def _host_initiator(rig: Rig) -> tuple[bool, Any]:
    """libiscsi from the rig namespace (where the later probe initiator runs): INQUIRY on each portal."""
    results = {}
    for node in rig.topology.controllers:
        url = f"iscsi://{node.address(rig.topology.networks['san'])}/{smoke_iqn(rig, node)}/0"
        proc = run(["iscsi-inq", "-i", f"{rig.topology.iqn_prefix}:host-probe", url], netns=rig.namespace,
                   timeout=30, check=False, log=rig.log)
        results[node.name] = "DIRECT_ACCESS" in proc.stdout
    return all(results.values()), results


def _vm_initiator(rig: Rig) -> tuple[bool, Any]:
    """open-iscsi in the initiator VM: discovery, login, the relative target port id as it sees it."""
    init = rig.topology.initiators[0]
    results = {}
    for node in rig.topology.controllers:
        portal = f"{node.address(rig.topology.networks['san'])}:3260"
        iqn = smoke_iqn(rig, node)
        link = f"/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-0"
        script = "\n".join([
            "set -e",
            f"iscsiadm -m discovery -t st -p {portal} | grep -q {iqn}",
            f"iscsiadm -m node -T {iqn} -p {portal} --login >/dev/null",
            f"for i in $(seq 1 50); do [ -e {link} ] && break; sleep 0.2; done",
            f"sg_vpd -p di_port {link} | grep -i 'relative target port' | grep -o '0x[0-9a-f]*' | head -1; rc=0",
            f"iscsiadm -m node -T {iqn} -p {portal} --logout >/dev/null || rc=1",
            f"iscsiadm -m node -T {iqn} -p {portal} -o delete || rc=1",
            "exit $rc",
        ])
        out = rig.ssh(init.name, script, timeout=90, check=False)
        value = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None
        results[node.name] = int(value, 16) if value and value.startswith("0x") else out.stderr.strip()[-200:]
    ok = all(isinstance(v, int) for v in results.values()) and len(set(results.values())) == len(results)
    return ok, {"rtpi_seen_by_initiator_vm": results}


def _lio_teardown(rig: Rig) -> tuple[bool, Any]:
    script = (SCRIPTS / "lio_smoke.py").read_text()
    results = per_node(rig.topology.controllers, lambda n: json.loads(rig.ssh(
        n.name, f"python3 - teardown {smoke_iqn(rig, n)}", input_text=script, timeout=60,
        check=True).stdout.strip().splitlines()[-1]))
    return all(set(r["deleted"]) == {"target", "storage"} for r in results.values()), results


def _jbod(rig: Rig) -> tuple[bool, Any]:
    seen = per_node(rig.topology.controllers, lambda n: [d.to_json() for d in jbod_disks(rig.guest(n.name))])
    by_name = {node: {d["name"]: d["wwid"] for d in disks} for node, disks in seen.items()}
    views = list(by_name.values())
    expected = {d.name for d in rig.topology.jbod.disks}
    ok = all(set(v) == expected for v in views) and all(v == views[0] for v in views)
    return ok, seen


def _pr(rig: Rig, jbod: Any) -> tuple[bool, Any]:
    if not isinstance(jbod, dict):
        return False, "no JBOD disks"
    keys = {n.name: PR_KEY_BASE + n.host_id for n in rig.topology.controllers}
    devices = {name: next(d["by_id"] for d in disks if d["name"] == "disk0") for name, disks in jbod.items()}
    for name, key in keys.items():
        rig.ssh(name, f"sg_persist -n --out --register-ignore --param-sark={key:#x} {devices[name]}", timeout=30,
                check=True)
    seen = {}
    for name in keys:
        out = rig.ssh(name, f"sg_persist -n --in --read-keys {devices[name]}", timeout=30, check=True).stdout
        seen[name] = sorted(int(k, 16) for k in re.findall(r"^\s+(0x[0-9a-f]+)\s*$", out, re.M))
    for name in keys:  # unregister: REGISTER AND IGNORE with a zero service action key
        rig.ssh(name, f"sg_persist -n --out --register-ignore --param-sark=0 {devices[name]}", timeout=30, check=False)
    ok = all(set(keys.values()) <= set(v) for v in seen.values())
    return ok, {"keys": {k: hex(v) for k, v in keys.items()}, "read_keys": {k: [hex(x) for x in v]
                                                                            for k, v in seen.items()}}


def _zk_quorum(rig: Rig) -> tuple[bool, Any]:
    states = zookeeper.member_states(rig.topology)
    return zookeeper.has_quorum(states), states


_KAZOO_PROBE = """
import sys, time
from kazoo.client import KazooClient
t0 = time.monotonic()
zk = KazooClient(hosts=sys.argv[1], timeout=4.0)
zk.start(timeout=30)
zk.ensure_path("/hacrig/smoke")
path = zk.create("/hacrig/smoke/" + sys.argv[2] + "-", ephemeral=True, sequence=True)
zk.delete(path)
print("connected", zk.client_state, round(time.monotonic() - t0, 2))
zk.stop()
zk.close()
"""


def _zk_from_guests(rig: Rig) -> tuple[bool, Any]:
    out = per_node(rig.topology.controllers, lambda n: rig.ssh(
        n.name, f"{VENV}/bin/python - {rig.zk_connect} {n.name}", input_text=_KAZOO_PROBE, timeout=90,
        check=False).stdout.strip())
    return all(v.startswith("connected CONNECTED") for v in out.values()), out


def _hacontrol(rig: Rig) -> tuple[bool, Any]:
    out = per_node(rig.topology.controllers, lambda n: rig.ssh(
        n.name, f"{VENV}/bin/python -c 'import hacontrol, sys; print(hacontrol.__file__)'", timeout=60,
        check=False).stdout.strip())
    return all(v.startswith("/opt/hacontrol/venv/") for v in out.values()), out


def write_report(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=2))
