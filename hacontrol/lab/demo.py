"""hactl lab demo: real iSCSI I/O through an unplanned failover and a planned switchover back, with a timeline.

1. Bring the lab up; wait for one active controller.
2. Start the probe initiator in the client namespace (writes every 10 ms, verifies everything at the end).
3. Kill the active controller's agent and target (kill -9); the survivor notices (the active falls silent on
   the peer link, or without the link its ZooKeeper session expires), fences (the lab's power-off), claims
   the VIP and announces it; the probe logs in again.
4. Power the dead controller back on; it rejoins as standby.
5. With a fresh probe run, `hactl failover` back to the first controller (planned, no detection phase).
6. Print both timelines and the probe's verdicts; tear the lab down (unless --keep).
"""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacontrol.lab.lab import IQN, LUN_ID, NODES, Lab, LabError


def other(node: str) -> str:
    return NODES[1] if node == NODES[0] else NODES[0]


class Demo:
    def __init__(self, lab: Lab, say: Callable[[str], None]):
        self.lab = lab
        self.say = say

    # --- cluster access (from inside the client namespace: the root namespace never talks to the lab) -----

    def hactl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        ns = self.lab.state()["netns"]["client"]
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "hacontrol.cli.main", *args,
                               "--config", str(self.lab.config_file)], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def status(self) -> dict[str, Any]:
        out = self.hactl("status", "--json", timeout=20)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def active(self, want: str | None = None) -> str | None:
        doc = self.status()
        nodes = [n for n in doc.get("nodes", []) if n["role"] == "active" and n["vips"]]
        if len(nodes) == 1 and (want is None or nodes[0]["node"] == want):
            return nodes[0]["node"]
        return None

    def wait(self, what: str, predicate: Callable[[], Any], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise LabError(f"timed out after {timeout_s:.0f} s waiting for {what} (logs in {self.lab.directory})")

    # --- the probe ------------------------------------------------------------------------------------

    def start_probe(self, name: str, duration_s: float = 300) -> tuple[subprocess.Popen, Path]:
        state = self.lab.state()
        stop_file = self.lab.directory / f"{name}.stop"
        stop_file.unlink(missing_ok=True)
        out = open(self.lab.directory / f"{name}.json", "w")  # noqa: SIM115 - the child owns it
        err = open(self.lab.directory / f"{name}.log", "w")  # noqa: SIM115
        vip = state["vip"].split("/")[0]
        proc = subprocess.Popen(["ip", "netns", "exec", state["netns"]["client"], sys.executable, "-m",
                                 "hacontrol.cli.main", "probe", "io", "--portal", f"{vip}:3260", "--target", IQN,
                                 "--lun", str(LUN_ID), "--duration", str(duration_s), "--interval-ms", "10",
                                 "--command-timeout", "2", "--login-timeout", "0.5", "--max-backoff", "0.05",
                                 "--stop-file", str(stop_file), "--json"], stdout=out, stderr=err,
                                start_new_session=True)
        out.close()
        err.close()
        state["pids"][f"probe-{name}"] = proc.pid
        self.lab._save(state)
        return proc, stop_file

    def stop_probe(self, name: str, proc: subprocess.Popen, stop_file: Path) -> dict[str, Any]:
        stop_file.touch()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        try:
            return json.loads((self.lab.directory / f"{name}.json").read_text())
        except ValueError as exc:
            tail = (self.lab.directory / f"{name}.log").read_text()[-800:]
            raise LabError(f"the probe produced no report: {tail}") from exc

    # --- the story ------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.say("bringing the lab up: namespaces, 3-member ZooKeeper, tgtd + agent per controller ...")
        t = time.monotonic()
        self.lab.up()
        first = self.wait("one active controller", self.active, 60)
        self.say(f"lab up in {time.monotonic() - t:.1f} s; {first} is active, {other(first)} standby")
        unplanned = self.unplanned(first)
        self.say(f"powering {first} back on; it rejoins as standby ...")
        self.lab.start_node(first)
        self.wait(f"{first} to rejoin as standby", lambda: self._standby_ready(first), 60)
        planned = self.planned(first)
        return {"unplanned": unplanned, "planned": planned}

    def _standby_ready(self, node: str) -> bool:
        doc = self.status()
        n = next((n for n in doc.get("nodes", []) if n["node"] == node), None)
        return bool(n and n["role"] == "standby" and n["ready"] and doc.get("automatic_failover", {}).get("possible"))

    def unplanned(self, victim: str) -> dict[str, Any]:
        survivor = other(victim)
        proc, stop_file = self.start_probe("unplanned")
        time.sleep(3.0)
        self.say(f"kill -9 of {victim}'s agent and tgtd (the controller's software dies) ...")
        t_kill = time.time()
        self.lab.kill(victim)
        self.wait(f"{survivor} to become active", lambda: self.active(survivor), 60)
        time.sleep(3.0)
        report = self.stop_probe("unplanned", proc, stop_file)
        record = self._last_history(lambda e: e.get("kind") == "failover" and e.get("to") == survivor)
        return _timeline(t_kill, record, report)

    def planned(self, target: str) -> dict[str, Any]:
        proc, stop_file = self.start_probe("planned")
        time.sleep(2.0)
        self.say(f"hactl failover --to {target} (planned switchover) ...")
        t_req = time.time()
        out = self.hactl("failover", "--to", target, "--json", timeout=60)
        if out.returncode != 0:
            self.stop_probe("planned", proc, stop_file)
            raise LabError(f"hactl failover failed: {out.stderr.strip()}")
        time.sleep(2.0)
        report = self.stop_probe("planned", proc, stop_file)
        record = self._last_history(lambda e: e.get("kind") == "switchover" and e.get("to") == target)
        done = json.loads(out.stdout)
        # Time zero is when the intent reached ZooKeeper, not when hactl started (its start-up is not failover).
        result = _timeline(float(done.get("requested_at", t_req)), record, report)
        result["hactl_elapsed_s"] = done.get("elapsed_s")
        return result

    def _last_history(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        out = self.hactl("history", "--json")
        events = json.loads(out.stdout) if out.returncode == 0 else []
        found = [e for e in events if match(e)]
        return found[-1] if found else {}


def _timeline(t0: float, record: dict[str, Any], probe: dict[str, Any]) -> dict[str, Any]:
    """Everything relative to the fault (or the request): detection, each takeover phase, first good I/O."""
    phases = {}
    if record:
        base = float(record["at"]) - t0
        phases = {k: round(base + float(v), 3) for k, v in record.get("phases", {}).items()}
    probe_start = datetime.datetime.fromisoformat(probe["started_at"]).timestamp()
    first_io = first_good_io_after(probe, t0 - probe_start)
    return {
        "phases_s": phases,
        "failover_s": phases.get("active"),
        "first_good_io_s": None if first_io is None else round(probe_start + first_io - t0, 3),
        "io_pause_s": probe["io_pause_s"],
        "io_pause_start_s": round(probe_start + probe["io_pause_start_s"] - t0, 3),
        "io_errors": probe["io_errors"],
        "writes_acknowledged": probe["writes_acknowledged"],
        "writes_lost": probe["writes_lost"],
        "errors_by_kind": probe.get("errors_by_kind", {}),
        "probe_fatal": probe.get("fatal"),
        "fence": record.get("fence", "") if record else "",
        "detected_by": record.get("detected_by", "zookeeper") if record else "",
    }


CLOCK_SLACK_S = 0.05  # two processes' wall clocks, read at different instants


def first_good_io_after(probe: dict[str, Any], fault_t_s: float) -> float | None:
    """The probe's time (s from its start) of the first good I/O after the fault's I/O pause, or None.

    The fault's pause is the longest one the probe saw when it began at or after the fault: its end is the
    first completion after it. A session loss is not the pause: in a planned move the old active cuts the
    connections and the probe logs in again and completes an I/O on it before the address moves, so the
    first I/O after the first outage can come long before the real pause.
    """
    start, length = float(probe["io_pause_start_s"]), float(probe["io_pause_s"])
    if length > 0 and start >= fault_t_s - CLOCK_SLACK_S:
        return start + length
    for o in probe.get("outages", []):  # the longest pause began before the fault: the first loss after it
        if o["lost_t_s"] >= fault_t_s - CLOCK_SLACK_S and o.get("first_io_t_s") is not None:
            return float(o["first_io_t_s"])
    return None


def summary(result: dict[str, Any]) -> dict[str, Any]:
    u, p = result["unplanned"], result["planned"]
    return {"failover_s": u["failover_s"], "io_pause_s": u["io_pause_s"], "io_errors": u["io_errors"],
            "writes_lost": u["writes_lost"], "first_good_io_s": u["first_good_io_s"],
            "planned_failover_s": p["failover_s"], "planned_io_pause_s": p["io_pause_s"],
            "planned_io_errors": p["io_errors"], "planned_writes_lost": p["writes_lost"],
            "passed": passed(result)}


def passed(result: dict[str, Any]) -> bool:
    """Both probe runs did real I/O, lost nothing, and the planned switchover showed the initiator no error."""
    u, p = result["unplanned"], result["planned"]
    ran = all(r["writes_acknowledged"] > 0 and not r["probe_fatal"] and r["failover_s"] is not None for r in (u, p))
    return ran and u["writes_lost"] == 0 and p["writes_lost"] == 0 and p["io_errors"] == 0


def render(result: dict[str, Any]) -> str:
    lines = []
    for title, key, zero in (("UNPLANNED: kill -9 of the active controller", "unplanned", "kill"),
                             ("PLANNED: hactl failover back", "planned", "request")):
        r = result[key]
        lines += ["", title]
        lines += [f"  t={t:+.3f} s  {label}" for t, label in timeline_events(r, zero, unplanned=key == "unplanned")]
        lines.append(f"  initiator: longest I/O pause {r['io_pause_s']:.3f} s, I/O errors {r['io_errors']}, "
                     f"writes acknowledged {r['writes_acknowledged']}, lost {r['writes_lost']}")
    for key in ("unplanned", "planned"):
        if result[key]["probe_fatal"]:
            lines.append(f"probe ({key}) could not run: {result[key]['probe_fatal']}")
    verdict = "PASS" if passed(result) else "FAIL"
    lines += ["", f"verdict: {verdict} (I/O ran, no acknowledged write lost, planned switchover without I/O "
              "errors)"]
    return "\n".join(lines)


PHASE_LABELS = {"claimed": "leader znode + new epoch", "fenced": "peer fenced", "alua": "ALUA AO",
                "vips": "VIP up and announced (gratuitous ARPs sent)", "active": "fully active"}


def timeline_events(r: dict[str, Any], zero: str, *, unplanned: bool) -> list[tuple[float, str]]:
    """The timeline's lines as (seconds, label), in time order: the fault, each phase, the initiator's pause."""
    detect = "target sees the leader znode released"
    if unplanned:
        detect = ("survivor hears nothing from the active on the peer link (both paths)"
                  if r.get("detected_by") == "peer_link" else "survivor sees the leader znode gone (session expired)")
    events = [(0.0, zero)]
    events += [(t, detect if phase == "detect" else PHASE_LABELS.get(phase, phase)) for phase, t in
               r["phases_s"].items()]
    pause_start = r.get("io_pause_start_s")
    if pause_start is not None and r["first_good_io_s"] is not None and pause_start >= -CLOCK_SLACK_S:
        events.append((r["io_pause_start_s"], "last good I/O before the longest pause"))
    if r["first_good_io_s"] is not None:
        events.append((r["first_good_io_s"], "first good I/O at the initiator"))
    return sorted(events, key=lambda e: e[0])


def run_demo(lab: Lab, keep: bool, as_json: bool) -> int:
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if as_json else (lambda m: print(m, flush=True))
    with lab.lock():
        try:
            result = Demo(lab, say).run()
        finally:
            if not keep:
                say("tearing the lab down ...")
                lab.down()
    if as_json:
        print(json.dumps({**summary(result), "detail": result}, indent=2, sort_keys=True))
    else:
        print(render(result))
    return 0 if passed(result) else 1


__all__ = ["render", "run_demo", "summary"]
