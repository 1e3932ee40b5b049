"""LIO adapter at scale, in the VM rig: converge a fresh controller to N LUNs, switch ALUA, adopt the peer's port.

    vagrant/rig up                                  # reused if already up
    /tmp/v/bin/python tests/bench/bench_lio_alua.py [--luns 1024] [--node ctrl-a] [--switches 5] [--keep]

The LUNs are device-mapper linear slices of the shared JBOD disk1, exported through one target with one
initiator ACL: N storage objects, 2N TPG LUNs (this controller's port and the peer's), 2N mapped LUNs, 2N ALUA
groups. Each LIO block backstore pins ~0.6 MiB of kernel memory (iblock's bio pool), so the rig's 896 MiB
controllers hold ~700 of them: the block measurements are capped by the memory available (``block_luns``),
and the ALUA switch is also measured on ``--luns`` (1,024) ramdisk backstores in the same two-TPG, two-group,
one-LU-group layout (the switch path does not depend on the backstore). Printed (JSON lines, then a summary):

* ``ramdisk_switch_*``: AluaControl.switch over 1,024 LUNs, both groups, LU group and per device;

* ``converge_s``: ``LioPort.configure()`` on a controller with no hacontrol objects (rtslib-fb + configfs);
* ``snapshot_s``: one full read of the LIO state (what a fresh agent, or a drift check, does);
* ``noop_configure_s``: configure() again (must apply nothing);
* ``observe_ms``: one per-tick observe() (median of 100);
* ``switch_s``: set_alua() own AO <-> Standby, both groups, waiting until the states read back (median/max),
  through the LU group (1 write per group) and per device (one write per storage object and group), plus the
  same through rtslib-fb's ALUATargetPortGroup objects for comparison;
* ``adopt_s`` / ``release_s``: presenting the peer's port (ALUA + TPG enable + one portal address) and back;
* ``teardown_s``: configure() with the targets removed from the configuration (removal at scale).

Not a test: nothing is asserted, the figures go to docs/lio.md. The rig is left up; the slices and LIO
objects are removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "vagrant"))

from rigctl import Rig  # noqa: E402 - needs the path above

IQN = "iqn.2026-11.org.hacontrol.rig:bench"
INITIATOR = "iqn.2024-01.org.hacontrol:probe"
PY = "/opt/hacontrol/venv/bin/python"

GUEST = r'''
import json, os, statistics, subprocess, sys, time
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
from hacontrol.config import loads
from hacontrol.core.model import AluaState
from hacontrol.adapters.lio import LioPort
from hacontrol.adapters.network import Network
from hacontrol.adapters.lio.snapshot import read_snapshot
AO, SB = AluaState.ACTIVE_OPTIMIZED, AluaState.STANDBY
action, node, cfg_path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
out = {}
def port(**kw):
    return LioPort(loads(open(cfg_path).read()), node, network=Network(), background=False,
                   standby_budget_s=3600, **kw)
if action == "slices":
    disk = os.path.realpath(sys.argv[5])
    st = os.stat(disk)
    size = int(open(f"/sys/class/block/{os.path.basename(disk)}/size").read())
    per = size // n
    table = ";".join(f"hacbench{i:04d},,,rw,0 {per} linear {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} {i * per}"
                     for i in range(n))
    t = time.monotonic()
    subprocess.run(["dmsetup", "create", "--concise", table], check=True)
    subprocess.run(["udevadm", "settle", "--timeout=600"], check=False)
    out["slices_s"] = round(time.monotonic() - t, 2)
elif action == "converge":
    p = port()
    t = time.monotonic()
    out["result"] = p.configure(time.monotonic() + 3600)
    out["converge_s"] = round(time.monotonic() - t, 2)
    if p.last_apply is not None:
        out["apply_s"] = round(p.last_apply.duration_s, 2)
        out["ops"] = {k: [c, round(s, 2)] for k, (c, s) in
                      sorted(p.last_apply.op_seconds.items(), key=lambda kv: -kv[1][1])[:8]}
    t = time.monotonic(); snap = read_snapshot(); out["snapshot_s"] = round(time.monotonic() - t, 2)
    out["luns_seen"] = len([s for s in snap.storage if s.startswith("hac-")])
    t = time.monotonic()
    out["noop"] = p.configure(time.monotonic() + 3600)
    out["noop_configure_s"] = round(time.monotonic() - t, 2)
    ticks = []
    for _ in range(100):
        t = time.perf_counter(); dp = p.observe(); ticks.append(time.perf_counter() - t)
    out["observe_ms"] = round(1000 * statistics.median(ticks), 2)
    out["configured"] = dp.configured
elif action == "switch":
    switches = int(sys.argv[5])
    for mode in ("lu_group", "per_device"):
        p = port(per_device_alua=(mode == "per_device"))
        p.configure(time.monotonic() + 3600)
        times = []
        for i in range(switches):
            for own, peer in ((AO, SB), (SB, AO)):
                t = time.monotonic(); p.set_alua(own, peer, time.monotonic() + 30); times.append(time.monotonic() - t)
        out[f"switch_{mode}_median_s"] = round(statistics.median(times), 4)
        out[f"switch_{mode}_max_s"] = round(max(times), 4)
    snap = read_snapshot()
    states = {(g.name, g.state) for s in snap.storage.values() for g in s.groups.values() if s.name.startswith("hac-")}
    out["states_after"] = sorted(states)
    import rtslib_fb
    objs = [rtslib_fb.ALUATargetPortGroup(so, g) for so in rtslib_fb.RTSRoot().storage_objects
            if so.name.startswith("hac-") for g in ("hac-node1", "hac-node2")]
    times = []
    for state_a, state_b in ((0, 2), (2, 0)):
        t = time.monotonic()
        for o in objs:
            o.alua_access_state = state_a if o.name == "hac-node1" else state_b
        times.append(time.monotonic() - t)
    out["switch_rtslib_per_device_s"] = round(max(times), 4)
elif action == "adopt":
    p = port(); p.configure(time.monotonic() + 3600); p.set_alua(AO, SB, time.monotonic() + 30)
    t = time.monotonic(); p.adopt_peer(9, time.monotonic() + 10); out["adopt_s"] = round(time.monotonic() - t, 4)
    out["hosted"] = p.observe().peer_ports_hosted
    t = time.monotonic(); p.release_peer(time.monotonic() + 10); out["release_s"] = round(time.monotonic() - t, 4)
    p.set_alua(SB, SB, time.monotonic() + 30)
elif action == "memory":
    avail = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemAvailable")))
    out["mem_available_mib"] = avail // 1024
elif action == "alua_ramdisk":
    # The ALUA switch path on N storage objects whatever their backstore: rd_mcp costs no bio pool.
    import rtslib_fb
    from pathlib import Path
    from hacontrol.adapters.lio.alua import AluaControl
    lugp = "/sys/kernel/config/target/core/alua/lu_gps/hacbench"
    os.makedirs(lugp, exist_ok=True); open(lugp + "/lu_gp_id", "w").write("4242")
    t = time.monotonic()
    target = rtslib_fb.Target(rtslib_fb.FabricModule("iscsi"), "iqn.2026-11.org.hacontrol.rig:rdbench")
    tpgs = [rtslib_fb.TPG(target, tag) for tag in (1, 2)]
    paths = []
    for i in range(n):
        so = rtslib_fb.RDMCPStorageObject(f"hacrd{i:04d}", size=4096, wwn=f"{i:08x}{'b' * 24}")
        for gid in (1, 2):
            os.mkdir(f"{so.path}/alua/hac-node{gid}")
            state = 0 if gid == 1 else 2
            for attr, value in (("tg_pt_gp_id", gid), ("alua_access_type", 1), ("alua_access_state", state)):
                open(f"{so.path}/alua/hac-node{gid}/{attr}", "w").write(str(value))
        open(f"{so.path}/alua_lu_gp", "w").write("hacbench")
        for tpg in tpgs:
            lun = rtslib_fb.LUN(tpg, i, so)
            open(f"{lun.path}/alua_tg_pt_gp", "w").write(f"hac-node{tpg.tag}")
        paths.append(Path(so.path))
    out["ramdisk_setup_s"] = round(time.monotonic() - t, 1)
    alua = AluaControl()
    for mode in ("lu_group", "per_device"):
        times = []
        for i in range(int(sys.argv[5])):
            for own, peer in ((SB, AO), (AO, SB)):
                t = time.monotonic()
                alua.switch(paths, [("hac-node1", own), ("hac-node2", peer)], time.monotonic() + 60,
                            per_device=(mode == "per_device"))
                times.append(time.monotonic() - t)
        out[f"ramdisk_switch_{mode}_median_s"] = round(statistics.median(times), 4)
        out[f"ramdisk_switch_{mode}_max_s"] = round(max(times), 4)
    wrong = [p.name for p in paths if alua.state(p, "hac-node1") != AO or alua.state(p, "hac-node2") != SB]
    out["ramdisk_wrong_states"] = len(wrong)
    t = time.monotonic()
    with open("/sys/kernel/rcu_expedited", "w") as f: f.write("1")
    target.delete()
    for i in range(n):
        rtslib_fb.RDMCPStorageObject(f"hacrd{i:04d}").delete()
    with open("/sys/kernel/rcu_expedited", "w") as f: f.write("0")
    os.rmdir(lugp)
    out["ramdisk_teardown_s"] = round(time.monotonic() - t, 1)
elif action == "teardown":
    p = port()
    t = time.monotonic()
    out["result"] = p.configure(time.monotonic() + 3600)
    out["teardown_s"] = round(time.monotonic() - t, 2)
    names = [f"hacbench{i:04d}" for i in range(n)]
    subprocess.run(["dmsetup", "remove", "--retry", *names], check=False, capture_output=True)
print(json.dumps(out))
'''


def config(rig: Rig, luns: int, node: str, with_target: bool = True) -> str:
    a, b = rig.addresses["ctrl-a"]["san"], rig.addresses["ctrl-b"]["san"]
    lines = ['[cluster]', 'name = "bench"', 'backend = "lio"', 'port_takeover = true', '']
    for name, nid, addr, portal in (("ctrl-a", 1, a, "10.50.1.121"), ("ctrl-b", 2, b, "10.50.1.122")):
        lines += ['[[node]]', f'name = "{name}"', f'id = {nid}', '[[node.interface]]', 'name = "enp0s4"',
                  f'address = "{addr}/24"', '[[node.portal]]', f'address = "{portal}/24"', 'interface = "enp0s4"', '']
    lines += ['[zookeeper]', f'hosts = {json.dumps(rig.zk_connect.split(","))}', '']
    if with_target:
        lines += ['[[target]]', f'iqn = "{IQN}"', '[[target.acl]]', f'initiator = "{INITIATOR}"']
        for i in range(luns):
            lines += ['[[target.lun]]', f'id = {i}', f'name = "b{i:04d}"', f'device = "/dev/mapper/hacbench{i:04d}"',
                      f'serial = "{i:08x}{"a" * 24}"']
    return "\n".join(lines) + "\n"


def guest(rig: Rig, node: str, *args: object, timeout: float = 3600) -> dict:
    cmd = f"{PY} - {' '.join(str(a) for a in args)}"
    r = rig.ssh(node, cmd, timeout=timeout, input_text=GUEST)
    if r.returncode != 0:
        raise SystemExit(f"{node} {args[0]} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_config(rig: Rig, node: str, text: str, path: str) -> None:
    r = rig.ssh(node, f"cat > {path}", input_text=text)
    if r.returncode != 0:
        raise SystemExit(r.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--luns", type=int, default=1024, help="LUNs for the ALUA switch measurement (ramdisk)")
    ap.add_argument("--block-luns", type=int, default=0,
                    help="block LUNs for convergence (default: --luns, capped by the controller's memory)")
    ap.add_argument("--node", default="ctrl-a")
    ap.add_argument("--switches", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-ramdisk", action="store_true", help="skip the 1,024-LUN ramdisk ALUA measurement")
    args = ap.parse_args()
    rig = Rig(quiet=True)
    if rig.state is None or rig.state.phase != "up":
        raise SystemExit("the rig is not up: vagrant/rig up")
    node, n = args.node, args.luns
    disk1 = rig.jbod_paths(node)["disk1"]
    avail = guest(rig, node, "memory", node, "-", 0)["mem_available_mib"]
    # Each LIO block backstore pins ~0.6 MiB of kernel memory (iblock's bio pool: 128 bios with 256-vector
    # bvecs each); leave 150 MiB for the rest of the controller.
    fits = int((avail - 150) / 0.65)
    blocks = min(args.block_luns or n, fits)
    results: dict[str, object] = {"luns": n, "block_luns": blocks, "node": node, "mem_available_mib": avail}
    if blocks < (args.block_luns or n):
        print(json.dumps({"note": f"{avail} MiB available on {node}: convergence measured with {blocks} block "
                          f"LUNs (each pins ~0.6 MiB of kernel memory)"}), flush=True)
    write_config(rig, node, config(rig, blocks, node), "/root/bench.toml")
    write_config(rig, node, config(rig, blocks, node, with_target=False), "/root/bench-empty.toml")
    steps = [("alua_ramdisk", ("alua_ramdisk", node, "-", n, args.switches)),
             ("slices", ("slices", node, "/root/bench.toml", blocks, disk1)),
             ("converge", ("converge", node, "/root/bench.toml", blocks)),
             ("switch", ("switch", node, "/root/bench.toml", blocks, args.switches)),
             ("adopt", ("adopt", node, "/root/bench.toml", blocks))]
    if args.skip_ramdisk:
        steps = steps[1:]
    if not args.keep:
        steps.append(("teardown", ("teardown", node, "/root/bench-empty.toml", blocks)))
    for name, call in steps:
        t = time.monotonic()
        out = guest(rig, node, *call)
        out["wall_s"] = round(time.monotonic() - t, 1)
        print(json.dumps({"step": name, **out}), flush=True)
        results.update({k: v for k, v in out.items() if k not in ("result", "states_after")})
    print(json.dumps({"summary": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
