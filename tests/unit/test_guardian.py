"""The guardian (hacontrol.agent.guardian) with real processes: an agent stand-in forks it and then dies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

AGENT = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from hacontrol.agent import guardian
    marker, how = Path(sys.argv[1]), sys.argv[2]

    def step_down():
        marker.write_text(f"stepped down by {os.getpid()}")
        return how != "fail"

    g = guardian.start(step_down)
    Path(str(marker) + ".pid").write_text(str(g.pid))
    if how == "term-the-guardian":
        os.kill(g.pid, signal.SIGTERM)  # meant for the agent: ignored
        time.sleep(0.5)
        print("alive" if os.path.exists(f"/proc/{g.pid}") and not marker.exists() else "gone", flush=True)
    if how in ("kill", "fail", "term-the-guardian"):
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(0)  # a clean exit ends the agent too
""")


# The runner adopts the guardian when the agent stand-in dies (a child subreaper, as systemd is for a
# service), so the test can read the guardian's exit status.
RUNNER = textwrap.dedent("""
    import ctypes, json, os, subprocess, sys
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    agent = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], capture_output=True, text=True)
    pid, status = os.wait()  # the orphaned guardian, now ours
    print(json.dumps({"agent": agent.returncode, "agent_out": agent.stdout, "guardian": pid,
                      "guardian_exit": os.waitstatus_to_exitcode(status)}))
""")


def _run(tmp_path: Path, how: str) -> tuple[dict, Path]:
    marker = tmp_path / "stepped"
    out = subprocess.run([sys.executable, "-c", RUNNER, AGENT, str(marker), how], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2], check=True)
    doc = json.loads(out.stdout)
    assert doc["guardian"] == int(Path(str(marker) + ".pid").read_text())
    return doc, marker


def test_a_killed_agents_guardian_steps_down_and_exits(tmp_path):
    doc, marker = _run(tmp_path, "kill")
    assert doc["agent"] == -signal.SIGKILL
    assert doc["guardian_exit"] == 0
    assert marker.read_text() == f"stepped down by {doc['guardian']}"  # in the guardian, not in the agent


def test_a_clean_exit_also_runs_the_step_down(tmp_path):
    doc, marker = _run(tmp_path, "exit")
    assert doc["agent"] == 0 and doc["guardian_exit"] == 0
    assert marker.exists()


def test_the_guardian_ignores_a_sigterm_meant_for_the_agent(tmp_path):
    doc, marker = _run(tmp_path, "term-the-guardian")
    assert "alive" in doc["agent_out"].splitlines()  # still waiting, not stepped down by the signal
    assert doc["guardian_exit"] == 0 and marker.exists()  # the agent's death still did it


def test_a_failed_step_down_ends_the_guardian_with_a_nonzero_status(tmp_path):
    doc, marker = _run(tmp_path, "fail")
    assert marker.exists() and doc["guardian_exit"] == 1
