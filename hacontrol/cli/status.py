"""hactl status: who is active, under which epoch, what each controller reports, and whether
automatic failover is possible right now (and if not, why).

The table is rendered from the same document ``--json`` prints, so the two
cannot disagree.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from hacontrol.adapters.zookeeper.admin import ClusterView
from hacontrol.agent import localstatus
from hacontrol.cli.common import OK, ZK_UNREACHABLE, CliError, add_common, admin, ago, emit_json, load_config, table
from hacontrol.config.schema import Config
from hacontrol.core.model import AluaState

HELP = """Show the cluster: the active controller and its epoch, each controller's role, ALUA state, addresses,
readiness and last report, maintenance, pending switchover, and whether automatic failover is possible now.

Without ZooKeeper it shows what the agents on this machine say (their status file in cluster.runtime_dir):
who serves, and whether it serves on its peer's promise (the peer link's failsafe).

Exit status: 0 when the status could be read (whatever it says), 3 when ZooKeeper is unreachable (with the
local agents' view when there is one), 2 for a configuration error. Use --json for scripts; the table shows
the same document."""

FAILSAFE_LINE = "ZooKeeper unreachable — failsafe: peer confirms standby"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="show who is active and whether failover is possible",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        with admin(args) as (adm, cfg):
            doc = status_doc(adm.view(), cfg, time.time())
    except CliError as exc:
        if exc.code != ZK_UNREACHABLE:
            raise
        doc = local_doc(load_config(args.config), str(exc), time.time())
        if not doc["nodes"]:
            raise
        print(f"hactl: {exc}", file=sys.stderr)
        if args.json:
            emit_json(doc)
        else:
            print(render_local(doc))
        return ZK_UNREACHABLE
    if args.json:
        emit_json(doc)
    else:
        print(render(doc))
    return OK


def local_doc(cfg: Config, error: str, now_wall: float) -> dict[str, Any]:
    """The agents' own status files on this machine (one on a controller, both in the lab)."""
    nodes = []
    for node in cfg.nodes:
        d = localstatus.read(cfg.runtime_dir, node.name)
        if d is not None:
            nodes.append({**d, "age_s": round(now_wall - float(d.get("at", 0)), 3)})
    return {"cluster": cfg.cluster_name, "zookeeper": error, "nodes": nodes,
            "dead_after_s": cfg.timing.peer_dead_after_s}


def render_local(doc: dict[str, Any]) -> str:
    lines = [f"cluster {doc['cluster']}: {doc['zookeeper']}", "what the agents on this machine say:", ""]
    rows = [[n["node"], n["role"], n.get("own_alua"), ",".join(n.get("vips", [])), n.get("session"),
             ago(n["age_s"]), n.get("reason")] for n in doc["nodes"]]
    lines.append(table(["NODE", "ROLE", "ALUA (own group)", "VIPS", "ZOOKEEPER", "WRITTEN", "REASON"], rows))
    lines.append("")
    for n in doc["nodes"]:
        if n.get("reason") == "failsafe":
            lines.append(f"{n['node']}: {FAILSAFE_LINE}{_promise_age(n)}")
        elif n.get("serving"):
            lines.append(f"{n['node']}: serving")
        if n.get("age_s", 0) > 5:
            lines.append(f"  {n['node']}: the status file is {ago(n['age_s'])}: is its agent running?")
        link = _link_line(n["node"], n.get("peer_link"), doc["dead_after_s"])
        if link:
            lines.append(f"  {link}")
    return "\n".join(lines)


def _promise_age(n: dict[str, Any]) -> str:
    link = n.get("peer_link") or {}
    age = link.get("promise_confirmed_ago_s")
    return "" if age is None else f" (the peer's promise renewed {age:.1f} s before this was written)"


def _link_line(node: str, link: dict[str, Any] | None, dead_after_s: float) -> str:
    """'peer link: ctrl-a hears its peer on 2/2 paths', naming the silent ones."""
    if not link:
        return ""
    paths = link.get("paths", [])
    silent = [p for p in paths if p.get("heard_ago_s") is None or p["heard_ago_s"] >= dead_after_s]
    line = f"peer link: {node} hears its peer on {len(paths) - len(silent)}/{len(paths)} paths"
    if silent:
        line += " (silent: " + ", ".join(f"{p['remote']}{' ' + p['error'] if p.get('error') else ''}"
                                          for p in silent) + ")"
    return line


def _alua(value: Any) -> str | None:
    try:
        return None if value is None else AluaState(int(value)).label
    except ValueError:
        return str(value)


def status_doc(view: ClusterView, cfg: Config, now_wall: float) -> dict[str, Any]:
    nodes = []
    for node in cfg.nodes:
        m = view.members.get(node.name)
        d = m.doc if m else {}
        nodes.append({
            "node": node.name,
            "id": node.id,
            "live_session": m is not None,
            "session": None if m is None else hex(m.session_id),
            "role": d.get("role", "no session"),
            "is_leader": view.leader is not None and view.leader.node == node.name,
            "alua": _alua(d.get("own_alua")),
            "vips": d.get("vips", []),
            "ready": d.get("ready"),
            "reason": d.get("reason"),
            "blockers": d.get("blockers", []),
            "frozen_actions": d.get("frozen", []),
            "storage_visible": d.get("storage_visible"),
            "fence": d.get("fence"),
            "hosts_peer_ports": d.get("hosts_peer_ports", False),
            "last_error": d.get("last_error", ""),
            "capacity": d.get("capacity", []),  # LIO: backing store fill per LUN (adapters/lio/capacity.py)
            "reservations": d.get("reservations", []),  # LIO: initiators' PR per LUN (adapters/lio/reservations.py)
            "reservations_sync": d.get("reservations_sync"),  # LIO: carried to the next active (adapters/lio/prsync.py)
            "config": {"sha256": (d.get("config_sha256") or "")[:12], "number": d.get("config_number"),
                       "restart_pending": d.get("config_restart_pending", False), "error": d.get("config_error", "")},
            "last_seen_s": None if m is None else round(now_wall - m.modified_wall, 3),
            "peer_link": d.get("peer_link"),
        })
    switchover = None
    if view.switchover is not None:
        s = view.switchover
        switchover = {"id": s.intent_id, "target": s.target, "by": s.by, "state": s.state, "reason": s.reason,
                      "requested_at": s.at, "timeout_s": s.timeout_s}
    leader = None
    if view.leader is not None:
        leader = {"node": view.leader.node, "epoch": view.leader.epoch, "since": view.leader.at,
                  "created_on_zookeeper": view.leader_ctime,
                  "session": None if view.leader_session is None else hex(view.leader_session)}
    maint = view.maintenance
    doc = {
        "cluster": cfg.cluster_name,
        "epoch": view.epoch,
        "leader": leader,
        "nodes": nodes,
        "maintenance": {"enabled": maint.enabled, "reason": maint.reason, "by": maint.by, "at": maint.at},
        "switchover": switchover,
        "config": view.config,
        "dead_after_s": cfg.timing.peer_dead_after_s,
    }
    reasons = failover_impossible(doc)
    doc["automatic_failover"] = {"possible": not reasons, "why_not": reasons}
    return doc


def failover_impossible(doc: dict[str, Any]) -> list[str]:
    """Sentences that explain why the standby would not take over if the active failed now."""
    why: list[str] = []
    if doc["maintenance"]["enabled"]:
        m = doc["maintenance"]
        why.append(f"maintenance mode is on ({m['reason'] or 'no reason given'}, by {m['by'] or 'unknown'})")
    leader = doc["leader"]
    standbys = [n for n in doc["nodes"] if not n["is_leader"]]
    if leader is None:
        why.append("no controller is active")
    for n in standbys:
        if not n["live_session"]:
            why.append(f"{n['node']} has no live ZooKeeper session: its agent is down or partitioned")
            continue
        if n["ready"] is False:
            why.append(f"{n['node']} is not ready (shared disks or target configuration missing)")
        for b in n["blockers"]:
            if not b.startswith("maintenance"):
                why.append(f"{n['node']}: {b}")
    return why


def render(doc: dict[str, Any]) -> str:
    leader = doc["leader"]
    head = f"cluster {doc['cluster']}   epoch {doc['epoch']}   "
    if leader:
        head += f"active {leader['node']} (epoch {leader['epoch']}, since {ago(time.time() - leader['since'])})"
    else:
        head += "active: none"
    rows = []
    for n in doc["nodes"]:
        rows.append([n["node"], n["role"] + (" *" if n["is_leader"] else ""), n["alua"], ",".join(n["vips"]),
                     {True: "yes", False: "no", None: "-"}[n["ready"]], n["session"],
                     None if n["last_seen_s"] is None else ago(n["last_seen_s"]), n["reason"]])
    lines = [head, "", table(["NODE", "ROLE", "ALUA (own group)", "VIPS", "READY", "SESSION", "REPORTED", "REASON"],
                             rows), ""]
    m = doc["maintenance"]
    on = f"ON: {m['reason'] or 'no reason given'} (by {m['by'] or '?'})"
    lines.append(f"maintenance: {on if m['enabled'] else 'off'}")
    names = [n["node"] for n in doc["nodes"]]
    for n in doc["nodes"]:
        if n.get("hosts_peer_ports"):
            others = [x for x in names if x != n["node"]]
            lines.append(f"ports: {n['node']} hosts its own port and {others[0] if others else 'the peer'}'s "
                         "(port takeover: portal addresses and target port adopted)")
    lines.extend(_link_lines(doc))
    for n in doc["nodes"]:
        if n["frozen_actions"]:
            lines.append(f"  {n['node']} would have done: {', '.join(n['frozen_actions'])}")
    for n in doc["nodes"]:
        c = n["config"]
        if c["error"] or c["restart_pending"]:
            lines.append(f"  {n['node']} configuration: {c['error'] or 'restart needed for non-target changes'}")
        if n.get("last_error"):
            lines.append(f"  {n['node']} last failed step: {n['last_error']}")
    lines.extend(_capacity_lines(doc))
    lines.extend(_reservation_lines(doc))
    s = doc["switchover"]
    if s is None:
        lines.append("switchover: none")
    else:
        why = f" ({s['reason']})" if s["reason"] else ""
        lines.append(f"switchover {s['id']} to {s['target']}: {s['state']}{why}")
    af = doc["automatic_failover"]
    if af["possible"]:
        lines.append("automatic failover: possible")
    else:
        lines.append("automatic failover: NOT possible")
        lines.extend(f"  - {w}" for w in af["why_not"])
    return "\n".join(lines)


def _link_lines(doc: dict[str, Any]) -> list[str]:
    out = []
    dead_after = doc.get("dead_after_s", 0.3)
    names = [n["node"] for n in doc["nodes"]]
    for n in doc["nodes"]:
        if n.get("live_session"):
            line = _link_line(n["node"], n.get("peer_link"), dead_after)
            if line:
                out.append(line + f" (reported {ago(n['last_seen_s'])})")
        if n.get("reason") == "promised":
            peer = next((x for x in names if x != n["node"]), "the peer")
            out.append(f"failsafe: {peer} serves without ZooKeeper; {n['node']} promised it over the peer link not "
                       "to claim (it takes over once the promise runs out, if the peer goes silent)")
    return out


def _reservation_lines(doc: dict[str, Any]) -> list[str]:
    """One line per LUN on which initiators hold persistent reservations (and whether the active's are in
    ZooKeeper yet, where the next active loads them from), and the LUNs whose reservations would not survive a
    failover (docs/vmware.md)."""
    out = []
    for n in doc["nodes"]:
        sync = n.get("reservations_sync") or {}
        unpublished = set(sync.get("unpublished", []))
        for r in n.get("reservations", []):
            h = r.get("holder")
            held = f", {h['type']} held by {h['initiator']}" if h else ", no reservation"
            where = " (not in ZooKeeper yet)" if n.get("role") == "active" and r["lun"] in unpublished else ""
            out.append(f"guest reservations: {n['node']} LUN {r['lun']}: {r['registrations']} registration"
                       f"{'' if r['registrations'] == 1 else 's'}{held}{where}")
        for lun, why in sorted(sync.get("not_loaded", {}).items()):
            out.append(f"guest reservations NOT carried over: {n['node']} LUN {lun}: {why}")
        if n.get("role") == "active" and sync and sync.get("served") is False:
            out.append(f"guest reservations on {n['node']} are read every tick, not served (FUSE unavailable: see "
                       "its journal, lio_pr_store_unavailable): a PR-OUT is acknowledged before ZooKeeper has it")
        if sync.get("untracked"):
            out.append(f"guest reservations stay on {n['node']} (lost on a failover) for LUN "
                       f"{', '.join(sync['untracked'])}: exported before hacontrol set force_pr_aptpl; re-create "
                       "the LUN's storage object to carry them")
    return out


def _capacity_lines(doc: dict[str, Any]) -> list[str]:
    """One line per LUN whose backing store is over its warning threshold."""
    out = []
    for n in doc["nodes"]:
        for c in n.get("capacity", []):
            if c.get("over") and c.get("used_ratio") is not None:
                pool = f" (pool {c['pool']})" if c.get("pool") else ""
                out.append(f"capacity: {n['node']} LUN {c['lun']} backing store {100 * c['used_ratio']:.0f}% full"
                           f"{pool}, warning at {100 * c['threshold_ratio']:.0f}%")
    return out
