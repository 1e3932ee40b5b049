"""An external fence agent: any program that powers the peer off and exits 0 only once it is off.

This is how hacontrol drives fence agents it does not implement itself
(``fence_ipmilan``, ``fence_redfish``, a lab's own script): the program gets
the node to fence and the epoch in its environment (HACONTROL_FENCE_NODE,
HACONTROL_FENCE_EPOCH) and must not exit 0 before the node is confirmed off.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import structlog

from hacontrol.agent.protocols import AdapterError

log = structlog.get_logger("hacontrol.fencing")


class CommandFencer:
    powers_off = True

    def __init__(self, argv: tuple[str, ...], timeout_s: float):
        if not argv:
            raise ValueError("a command fencer needs a program")
        self.argv = argv
        self.timeout_s = timeout_s

    @property
    def name(self) -> str:
        return f"command:{os.path.basename(self.argv[0])}"

    def fence(self, node: str, epoch: int, deadline: float) -> str:
        """Run the program; return its last line of output; raise AdapterError unless it exits 0 in time."""
        budget = min(self.timeout_s, deadline - time.monotonic())
        if budget <= 0:
            raise AdapterError(f"{self.name}: no time left to fence {node}")
        env = {**os.environ, "HACONTROL_FENCE_NODE": node, "HACONTROL_FENCE_EPOCH": str(epoch)}
        proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AdapterError(f"{self.name}: did not confirm {node} off within {budget:.1f} s") from None
        last = (out or "").strip().splitlines()[-1:] or [""]
        if proc.returncode != 0:
            raise AdapterError(f"{self.name}: exit {proc.returncode} fencing {node}: {last[0][:200]}")
        log.info("fence_command_ok", node=node, epoch=epoch, method=self.name)
        return last[0][:200]
