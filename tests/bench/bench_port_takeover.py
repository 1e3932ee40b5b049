"""Port takeover in the VM rig: what a kernel initiator with ESXi's default iSCSI timeouts sees when the active
controller is powered off, with and without port takeover (issue "Port takeover").

The initiator VM logs in to both controllers' portals with open-iscsi set like ESXi's software adapter
(NOP-Out interval 15 s, NOP-Out timeout 10 s, recovery/replacement timeout 10 s, login timeout 5 s) under
dm-multipath with the ALUA handler; `hactl probe io --device` writes, reads back and verifies through the
multipath device. Each run: power the active VM off, let the probe run on, stop it, read its report; then power
the VM back on and measure the hand-back with a second probe (port takeover only: the survivor returns the
port). Prints one line per run and a summary; --json writes everything.

Needs the rig up (`vagrant/rig up`); deploys and starts the agents itself and stops them at the end:

    HACONTROL_PYTHON=.venv/bin/python .venv/bin/python tests/bench/bench_port_takeover.py --runs 10
    ... --runs 3 --modes off            # the no-takeover baseline only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "vagrant"))
sys.path.insert(0, str(ROOT))

from rigctl import Rig, agents  # noqa: E402

from tests.chaos.rigchaos import Cluster  # noqa: E402

ESXI_DEFAULTS = {  # open-iscsi node settings that match ESXi's software iSCSI adapter defaults
    "node.conn[0].timeo.noop_out_interval": "15",
    "node.conn[0].timeo.noop_out_timeout": "10",
    "node.session.timeo.replacement_timeout": "10",
    "node.conn[0].timeo.login_timeout": "5",
}
HACTL = "/opt/hacontrol/venv/bin/hactl"


def _ssh(rig: Rig, cmd: str, timeout: float = 120) -> str:
    r = rig.ssh(_initiator(rig), cmd, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"initiator: {cmd!r} failed ({r.returncode}): {r.stderr[-800:]}")
    return r.stdout


def _initiator(rig: Rig) -> str:
    return next(n for n in rig.topology.nodes if n not in rig.controllers)


def _portals(rig: Rig) -> list[str]:
    net = rig.topology.networks["san"]
    return [f"{net.cidr.network_address + agents.PORTAL_HOST[n]}:3260" for n in rig.controllers]


def initiator_logout(rig: Rig) -> None:
    _ssh(rig, f"iscsiadm -m node -T {agents.IQN} -u >/dev/null 2>&1; iscsiadm -m node -T {agents.IQN} -o delete "
              ">/dev/null 2>&1; multipath -F >/dev/null 2>&1; true")


def initiator_login(rig: Rig) -> str:
    """Log in to both portals with ESXi's timeouts; return the multipath device of LUN 0 (two paths)."""
    initiator_logout(rig)
    for portal in _portals(rig):
        base = f"iscsiadm -m node -T {agents.IQN} -p {portal}"
        sets = "; ".join(f"{base} -o update -n '{k}' -v {v}" for k, v in ESXI_DEFAULTS.items())
        _ssh(rig, f"{base} -o new >/dev/null; {sets}; {base} --login >/dev/null")
    for _ in range(60):  # bounded: 30 s for udev and multipathd
        out = _ssh(rig, "udevadm settle; multipathd show paths raw format '%d %m %i %T'")
        paths = [line.split() for line in out.splitlines() if len(line.split()) == 4]
        lun0 = {}
        for dev, mp, hcil, state in paths:
            if hcil.endswith(":0") and mp not in ("[orphan]", "-"):
                lun0.setdefault(mp, []).append((dev, state))
        for mp, members in lun0.items():
            if len(members) == 2:
                return f"/dev/mapper/{mp}"
        time.sleep(0.5)
    raise RuntimeError(f"no two-path multipath device for LUN 0: {out}")


def probe_start(rig: Rig, device: str, name: str, duration_s: float) -> None:
    _ssh(rig, f"rm -f /root/{name}.stop /root/{name}.json; nohup {HACTL} probe io --device {device} "
              f"--duration {duration_s} --interval-ms 10 --stop-file /root/{name}.stop --json "
              f"> /root/{name}.json 2>/root/{name}.log < /dev/null & echo $! > /root/{name}.pid")


def probe_stop(rig: Rig, name: str, timeout_s: float = 240) -> dict[str, Any]:
    _ssh(rig, f"touch /root/{name}.stop")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = _ssh(rig, f"kill -0 $(cat /root/{name}.pid) 2>/dev/null || cat /root/{name}.json")
        if out.strip():
            return json.loads(out)
        time.sleep(2)
    raise RuntimeError(f"probe {name} did not finish within {timeout_s:.0f} s")


def one_run(rig: Rig, cluster: Cluster, device: str, takeover: bool, index: int) -> dict[str, Any]:
    active = cluster.restore()
    probe_start(rig, device, f"off{index}", 600)
    time.sleep(8)
    t0 = time.monotonic()
    rig.power_off(active)
    deadline = t0 + 60
    while time.monotonic() < deadline and cluster.active() != cluster.peer(active):
        time.sleep(0.3)
    took_over_s = time.monotonic() - t0
    time.sleep(20 if takeover else 55)  # the baseline needs ~35 s before multipath moves on
    off = probe_stop(rig, f"off{index}")
    result: dict[str, Any] = {"mode": "takeover" if takeover else "baseline", "run": index, "powered_off": active,
                              "survivor_active_after_s": round(took_over_s, 2), "pause_s": off["io_pause_s"],
                              "io_errors": off["io_errors"], "writes_lost": off["writes_lost"],
                              "writes_acknowledged": off["writes_acknowledged"]}
    if takeover:  # hand-back: the powered-off controller returns and gets its port back
        probe_start(rig, device, f"back{index}", 600)
        time.sleep(3)
        cluster.restore()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            nodes = {n["node"]: n for n in cluster.status().get("nodes", [])}
            if not any(n.get("hosts_peer_ports") for n in nodes.values()):
                break
            time.sleep(1)
        time.sleep(8)
        back = probe_stop(rig, f"back{index}")
        result.update(handback_pause_s=back["io_pause_s"], handback_io_errors=back["io_errors"],
                      handback_writes_lost=back["writes_lost"])
    return result


def run_mode(rig: Rig, takeover: bool, runs: int) -> list[dict[str, Any]]:
    agents.reset(rig)
    rig.provision()  # the controllers run this checkout's hacontrol
    # No hardware watchdog here: under TCG a VM booting next to the survivor can starve its vCPU past the
    # watchdog's 2 s and reset it (seen in this benchmark); the chaos tests keep the watchdog on.
    agents.deploy(rig, agents.config_text(rig, port_takeover=takeover, watchdog=False))
    agents.start(rig)
    cluster = Cluster(rig)
    cluster.restore()
    device = initiator_login(rig)
    out = []
    try:
        for i in range(runs):
            r = one_run(rig, cluster, device, takeover, i)
            print(json.dumps(r), flush=True)
            out.append(r)
    finally:
        cluster.restore()
        initiator_logout(rig)
        agents.reset(rig)
    return out


def summary(results: list[dict[str, Any]]) -> str:
    lines = ["| mode | runs | longest I/O pause median / max | I/O errors | writes lost "
             "| hand-back pause median / max |", "|---|---|---|---|---|---|"]
    for mode in ("baseline", "takeover"):
        rs = [r for r in results if r["mode"] == mode]
        if not rs:
            continue
        p = [r["pause_s"] for r in rs]
        hb = [r["handback_pause_s"] for r in rs if "handback_pause_s" in r]
        hbs = f"{statistics.median(hb):.2f} / {max(hb):.2f} s" if hb else "-"
        errors = sum(r["io_errors"] + r.get("handback_io_errors", 0) for r in rs)
        lost = sum(r["writes_lost"] + r.get("handback_writes_lost", 0) for r in rs)
        pause = f"{statistics.median(p):.2f} / {max(p):.2f} s"
        lines.append(f"| {mode} | {len(rs)} | {pause} | {errors} | {lost} | {hbs} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--modes", default="off,on", help="off = baseline without port takeover, on = with it")
    ap.add_argument("--json", type=Path, help="write all runs here")
    args = ap.parse_args()
    rig = Rig()
    if rig.state is None or rig.state.phase != "up":
        print("the rig is not up: vagrant/rig up", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        results += run_mode(rig, mode == "on", args.runs)
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
