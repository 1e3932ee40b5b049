"""The lab's power fence agent: ``python -m hacontrol.lab.fence_agent NODE LAB_DIR``.

Emulates cutting a controller's power: its agent and tgtd are killed (by the PIDs the lab recorded,
checked against /proc so a recycled PID is never hit), its addresses vanish, its link goes down. It exits 0
only once all of that is confirmed, as a fence agent must. Standard library only: a fence agent runs on the
takeover's critical path, so it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORDS = (b"hacontrol", b"tgtd", b"QuorumPeerMain")


def ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(w in cmdline for w in WORDS)


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


def kill_all(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    """SIGKILL each PID that still runs something of the lab; return those still alive after the wait."""
    for pid in pids:
        if ours(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if ours(p) and alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if ours(p) and alive(p)]
    return left


def power_off(lab_dir: Path, node: str) -> None:
    state = json.loads((lab_dir / "state.json").read_text())
    pids = [state["pids"][k] for k in (f"{node}-agent", f"{node}-tgtd") if k in state["pids"]]
    left = kill_all(pids)
    if left:
        raise RuntimeError(f"{node}: processes {left} survived SIGKILL")
    ns = state["netns"][node]
    # Only the managed address goes (a reboot would drop it; the static one comes back with the link).
    subprocess.run(["ip", "-n", ns, "addr", "del", state["vip"], "dev", "eth0"], capture_output=True, check=False,
                   timeout=5)
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], capture_output=True, check=True, timeout=5)
    # the interconnect (peer link path 0) goes dark with the power, too (a lab without one has nothing to pull)
    subprocess.run(["ip", "-n", ns, "link", "set", "ic0", "down"], capture_output=True, check=False, timeout=5)
    state.setdefault("off", {})[node] = True
    tmp = lab_dir / "state.json.fence"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, lab_dir / "state.json")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m hacontrol.lab.fence_agent NODE LAB_DIR", file=sys.stderr)
        return 2
    node, lab_dir = argv
    try:
        power_off(Path(lab_dir), node)
    except (OSError, ValueError, KeyError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"fence {node}: {exc}", file=sys.stderr)
        return 1
    print(f"{node} powered off (processes killed, link down)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
