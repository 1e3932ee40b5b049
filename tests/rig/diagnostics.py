"""What a failed (or timed-out) rig test leaves behind to debug from, and the per-test time limit.

On a failure in any phase of a rig test: both controllers' hacontrol journal since the test began, the rig's
own log (rig.jsonl) since then, `hactl status`, and, for a chaos trial, where the trial was and what the
invariant checker last said. It goes into the test's report (pytest prints it; the junit XML keeps it) and
into <run log folder>/failures/<test>.txt, which outlives `vagrant/rig down`. Every step is bounded, and a
step that fails says so instead of hiding the failure it was called for.

Time limits: each rig test gets RIG_TEST_LIMIT_S (a marker `timeout` of its own wins), scaled by the rig's
speed factor; pytest-timeout's signal method fails that test alone and the run goes on.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

RIG_TEST_LIMIT_S = 600.0
TAIL_LINES = 150
START = pytest.StashKey[float]()


def apply_time_limits(items: list[pytest.Item], factor: float) -> None:
    for item in items:
        if "rig" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(RIG_TEST_LIMIT_S * max(1.0, factor), method="signal"))


def mark_start(item: pytest.Item) -> None:
    item.stash[START] = time.time()


def collect(item: pytest.Item, rig: Any) -> str:
    since = item.stash.get(START, time.time() - 600)
    parts = [f"test {item.nodeid} began {time.strftime('%H:%M:%S', time.localtime(since))}"]
    for title, step in (("chaos trial", _trial_state), ("hactl status", lambda: _status(rig)),
                        *((f"journal {node}", (lambda n=node: _journal(rig, n, since))) for node in rig.controllers),
                        ("rig.jsonl since the test began", lambda: _rig_log(rig, since))):
        try:
            text = step()
        except Exception as exc:  # a diagnostic that cannot be had is itself a fact worth printing
            text = f"(not available: {type(exc).__name__}: {exc})"
        if text:
            parts.append(f"----- {title} -----\n{text}")
    report = "\n".join(parts)
    _keep(item, rig, report)
    return report


def _trial_state() -> str:
    campaign = sys.modules.get("tests.chaos.campaign")
    state = getattr(campaign, "CURRENT_TRIAL", None)
    return json.dumps(state, indent=1, default=str)[-6000:] if state else ""


def _status(rig: Any) -> str:
    from rigctl import agents

    out = agents.hactl(rig, "status", timeout=rig.scaled(30))
    return (out.stdout + out.stderr).strip()[-4000:]


def _journal(rig: Any, node: str, since: float) -> str:
    if rig.vm_state(node) != "running":
        return f"(VM {rig.vm_state(node)})"
    cmd = (f"journalctl -u hacontrol.service --since @{int(since) - 5} --no-pager -o short-precise "
           f"| tail -n {TAIL_LINES}; systemctl status hacontrol.service --no-pager -n 0 | head -8")
    out = rig.ssh(node, cmd, timeout=rig.scaled(30))
    return (out.stdout + out.stderr).strip()


def _rig_log(rig: Any, since: float) -> str:
    if rig.log_dir is None:
        return "(no rig state)"
    path = Path(rig.log_dir) / "rig.jsonl"
    lines = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("t", since) >= since - 5:
                lines.append(line[:400])
        except ValueError:
            continue
    return "\n".join(lines[-TAIL_LINES:])


def _keep(item: pytest.Item, rig: Any, report: str) -> None:
    if rig.log_dir is None:
        return
    folder = Path(rig.log_dir) / "failures"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-150:] + ".txt")).write_text(report + "\n")
