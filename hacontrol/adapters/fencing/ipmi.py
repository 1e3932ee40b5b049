"""Power fencing through a BMC with ipmitool: power off, then poll until the BMC confirms "off".

``ipmitool -I lanplus -H host -p port -U user -E chassis power off``: the password goes through the
environment (``IPMI_PASSWORD``, read by ``-E``), never the command line, where any local user could read it
in /proc. A BMC's answer to "power off" only says it accepted the request; fence_ipmilan's own metadata
warns that the status may read "on" for a while after (or, on some BMCs, "off" before the power is really
gone), so the peer counts as fenced only once ``chassis power status`` says "off". If the off request itself
fails (a BMC busy with another session, a lost UDP packet), it is sent again on the next round; a status of
"off" ends the loop either way. Every ipmitool call has its own timeout, and the whole is bounded by the
method's ``timeout_s`` and the caller's deadline. Messages name the BMC and the step; the password never
appears (output is redacted before it is quoted, in case a BMC echoes it).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from hacontrol.agent.protocols import AdapterError
from hacontrol.config.schema import FenceMethod

log = structlog.get_logger("hacontrol.fencing")

POWER_STATUS = re.compile(r"Chassis Power is (?P<state>on|off)\b", re.IGNORECASE)
OFF_ACCEPTED = re.compile(r"Chassis Power Control: (Down/Off|Off)\b", re.IGNORECASE)
MAX_ROUNDS = 1000  # with the deadline, bounds the loop even if the clock stood still

# (returncode, combined output); raises subprocess.TimeoutExpired when the call outlives its timeout.
Runner = Callable[[Sequence[str], Mapping[str, str], float], tuple[int, str]]


def run_ipmitool(argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> tuple[int, str]:
    done = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL, check=False)
    return done.returncode, (done.stdout or "") + (done.stderr or "")


def parse_power_status(output: str) -> str | None:
    """'on' | 'off' from ``chassis power status`` output, None if the output says neither."""
    match = POWER_STATUS.search(output)
    return match["state"].lower() if match else None


class IpmiFencer:
    powers_off = True

    def __init__(self, method: FenceMethod, *, cipher_suite: int | None = None, poll_interval_s: float = 0.5,
                 call_timeout_s: float = 5.0, runner: Runner = run_ipmitool, program: str = "ipmitool",
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if not method.host:
            raise ValueError("ipmi fencing needs the BMC's host")
        if method.password is None or not method.password.reveal():
            raise ValueError(f"ipmi fencing of {method.host} needs a password (it is passed as IPMI_PASSWORD)")
        self.host, self.port, self.username = method.host, method.port, method.username
        self.interface = method.ipmi_interface or "lanplus"
        self._password = method.password
        self.timeout_s = method.timeout_s
        self.cipher_suite = cipher_suite  # lanplus default (17 in ipmitool 1.8.19) unless the BMC needs another
        self.poll_interval_s, self.call_timeout_s = poll_interval_s, call_timeout_s
        self._runner, self.program, self._clock, self._sleep = runner, program, clock, sleep

    @property
    def name(self) -> str:
        return f"ipmi:{self.host}"

    def __repr__(self) -> str:
        return f"IpmiFencer(host={self.host!r}, port={self.port}, user={self.username!r}, password=***)"

    def argv(self, *command: str) -> list[str]:
        """The ipmitool command line: no secret in it (``-E`` reads IPMI_PASSWORD from the environment)."""
        argv = [self.program, "-I", self.interface, "-H", self.host, "-p", str(self.port)]
        if self.username:
            argv += ["-U", self.username]
        argv += ["-E", "-N", "1", "-R", "1"]  # lanplus: 1 s per retransmit, 1 retry; our timeout bounds the rest
        if self.cipher_suite is not None:
            argv += ["-C", str(self.cipher_suite)]
        return [*argv, *command]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "IPMI_PASSWORD": self._password.reveal()}

    def fence(self, node: str, epoch: int, deadline: float) -> str:
        """Power ``node`` off through its BMC; return once the BMC reports it off. AdapterError otherwise."""
        start = self._clock()
        end = min(deadline, start + self.timeout_s)
        off_sent, last = False, "no answer yet"
        for _ in range(MAX_ROUNDS):
            if not off_sent:
                off_sent, last = self._power_off(end)
            state, status_text = self._status(end)
            if state == "off":
                took = self._clock() - start
                log.info("fence_ipmi_off", node=node, epoch=epoch, bmc=self.host, seconds=round(took, 3))
                return f"{node} off (BMC {self.host} confirmed after {took:.1f} s)"
            last = status_text if off_sent else last
            if self._clock() + self.poll_interval_s >= end:
                break
            self._sleep(self.poll_interval_s)
        step = "confirming power off" if off_sent else "power off"
        raise AdapterError(f"{self.name}: {step} of {node} not confirmed within {self.timeout_s:g} s "
                           f"(last: {last}); check the BMC address, user and network, or power it off by hand")

    def _power_off(self, end: float) -> tuple[bool, str]:
        code, out = self._call(("chassis", "power", "off"), end)
        if code == 0 and OFF_ACCEPTED.search(out):
            return True, "power off accepted"
        log.warning("fence_ipmi_off_refused", bmc=self.host, code=code, output=self._last_line(out))
        return False, f"power off: {self._last_line(out) or f'exit {code}'}"

    def _status(self, end: float) -> tuple[str | None, str]:
        code, out = self._call(("chassis", "power", "status"), end)
        state = parse_power_status(out) if code == 0 else None
        return state, f"power status: {state or self._last_line(out) or f'exit {code}'}"

    def _call(self, command: Sequence[str], end: float) -> tuple[int, str]:
        budget = min(self.call_timeout_s, end - self._clock())
        if budget <= 0:
            return -1, "no time left"
        try:
            code, out = self._runner(self.argv(*command), self.environment(), budget)
        except subprocess.TimeoutExpired:
            return -1, f"ipmitool {' '.join(command)} timed out after {budget:.1f} s"
        except OSError as exc:
            return -1, f"cannot run {self.program}: {exc.strerror or exc} (is ipmitool installed?)"
        return code, self._redact(out)

    def _redact(self, text: str) -> str:
        secret = self._password.reveal()
        return text.replace(secret, "***") if secret else text

    @staticmethod
    def _last_line(output: str) -> str:
        lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""
