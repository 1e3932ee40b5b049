"""IpmiFencer through real ipmitool against OpenIPMI's BMC simulator (``ipmi_sim``, Debian ``openipmi``) on loopback.

The simulated BMC listens on 127.0.0.1 (a free UDP port) and delegates chassis power to a small script
(``chassis_control``, see ipmi_lan(5)) that keeps the power state in a file. The script can lag: after
"power off" it keeps answering "on" for a given number of status queries, the early/late status that
fence_ipmilan warns about, so the poll-until-off loop is exercised against the real protocol.

Measured here: ipmi_sim 2.0.33 offers no cipher suite 17 (ipmitool 1.8.19's default) and no "Get Channel
Cipher Suites", so the fencer is given cipher suite 3. ipmi_sim is ended by PID in teardown.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hacontrol.adapters.fencing.ipmi import IpmiFencer
from hacontrol.agent.protocols import AdapterError
from hacontrol.config.schema import FenceMethod, Secret

pytestmark = pytest.mark.skipif(shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None,
                                reason="needs ipmi_sim (Debian openipmi) and ipmitool")

CHASSIS = """#!/bin/sh
# ipmi_sim chassis_control: "get power" / "set power 0|1" (no device argument in 2.0.33)
dir=$(dirname "$0")
op=$1; shift
case $op in
  get)
    for parm in "$@"; do
      case $parm in
        power)
          lag=$(cat "$dir/lag" 2>/dev/null || echo 0)
          if [ "$(cat "$dir/power")" = 0 ] && [ "$lag" -gt 0 ]; then
            echo $((lag - 1)) > "$dir/lag"; echo "power:1"
          else
            echo "power:$(cat "$dir/power")"
          fi;;
        boot) echo "boot:default";;
        *) echo "Invalid parameter: $parm"; exit 1;;
      esac
    done;;
  set)
    while [ -n "$1" ]; do
      [ "$1" = power ] && { echo "$2" > "$dir/power"; echo "power $2" >> "$dir/requests"; }
      shift 2
    done;;
  *) exit 1;;
esac
"""


@dataclass
class Bmc:
    port: int
    dir: Path
    password: str
    proc: subprocess.Popen

    def method(self, password: str | None = None, timeout_s: float = 10.0) -> FenceMethod:
        return FenceMethod(method="ipmi", timeout_s=timeout_s, host="127.0.0.1", port=self.port, username="fence",
                           password=Secret(password or self.password))

    @property
    def requests(self) -> list[str]:
        path = self.dir / "requests"
        return path.read_text().splitlines() if path.exists() else []


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(port: int, password: str, chassis: Path) -> str:
    return f"""name "hacontrol-fence-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{chassis}"
  user 2 true "fence" "{password}" admin 10 md5
"""


def _answers(bmc: Bmc) -> bool:
    probe = IpmiFencer(bmc.method(), cipher_suite=3)
    done = subprocess.run(probe.argv("chassis", "power", "status"), env=probe.environment(), capture_output=True,
                          text=True, timeout=10, check=False)
    return "Chassis Power is" in done.stdout


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[Bmc]:
    password = "sim-" + secrets.token_hex(6)
    chassis = tmp_path / "chassis.sh"
    chassis.write_text(CHASSIS)
    chassis.chmod(0o755)
    (tmp_path / "power").write_text("1\n")
    (tmp_path / "lan.conf").write_text(_config(port := _free_udp_port(), password, chassis))
    (tmp_path / "bmc.emu").write_text("mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\n"
                                      "mc_enable 0x20\n")
    log = (tmp_path / "ipmi_sim.log").open("ab")
    proc = subprocess.Popen(["ipmi_sim", "-c", str(tmp_path / "lan.conf"), "-f", str(tmp_path / "bmc.emu"), "-s",
                             str(tmp_path / "state"), "-n"], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    sim = Bmc(port, tmp_path, password, proc)
    try:
        for _ in range(50):  # bounded: up in well under a second here
            if proc.poll() is not None:
                pytest.fail(f"ipmi_sim exited {proc.returncode}: {(tmp_path / 'ipmi_sim.log').read_text()}")
            if _answers(sim):
                break
            time.sleep(0.1)
        else:
            pytest.fail("ipmi_sim never answered")
        yield sim
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_power_off_is_confirmed_through_a_lagging_status(bmc):
    (bmc.dir / "lag").write_text("3\n")  # "on" for three more queries after the off request
    fencer = IpmiFencer(bmc.method(), cipher_suite=3, poll_interval_s=0.1)
    detail = fencer.fence("ctrl-b", 5, time.monotonic() + 20)
    assert detail.startswith("ctrl-b off (BMC 127.0.0.1 confirmed after")
    assert bmc.requests == ["power 0"] and (bmc.dir / "power").read_text().strip() == "0"
    assert (bmc.dir / "lag").read_text().strip() == "0"  # every lagging "on" was polled through


def test_already_off_is_confirmed(bmc):
    (bmc.dir / "power").write_text("0\n")
    assert "off" in IpmiFencer(bmc.method(), cipher_suite=3).fence("ctrl-b", 5, time.monotonic() + 20)


def test_wrong_password_fails_naming_the_bmc_not_the_password(bmc):
    wrong = "wrong-" + secrets.token_hex(6)
    fencer = IpmiFencer(bmc.method(password=wrong, timeout_s=4.0), cipher_suite=3, poll_interval_s=0.2)
    with pytest.raises(AdapterError) as caught:
        fencer.fence("ctrl-b", 5, time.monotonic() + 20)
    message = str(caught.value)
    assert message.startswith("ipmi:127.0.0.1: power off of ctrl-b not confirmed")
    assert wrong not in message and bmc.password not in message
    assert bmc.requests == []  # nothing reached the chassis


def test_a_silent_bmc_fails_within_the_budget(bmc):
    os.kill(bmc.proc.pid, signal.SIGSTOP)  # packets are accepted by the kernel, nobody answers
    fencer = IpmiFencer(bmc.method(timeout_s=3.0), cipher_suite=3, call_timeout_s=2.0, poll_interval_s=0.2)
    start = time.monotonic()
    with pytest.raises(AdapterError, match="not confirmed within 3 s"):
        fencer.fence("ctrl-b", 5, time.monotonic() + 20)
    assert time.monotonic() - start < 6.0
