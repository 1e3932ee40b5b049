"""A PR-OUT storm from the initiator VM, and the check that a failover in the middle of it loses no acknowledged
change (issue #18): the chaos faults ``pr-storm-*`` (faults.py) and the rig's reservation tests use it.

The VM's own IQN (open-iscsi iface ``hacpra``; the probe uses another IQN) logs in to both controllers' own
portals. The storm changes that initiator's key with REGISTER AND IGNORE EXISTING KEY through the active's
portal, as fast as sg_persist goes, and logs each acknowledged one (its number and the time). After the
failover the key the new active holds must be the last one acknowledged, or the one that was in flight.
"""

from __future__ import annotations

import re
import time
from typing import Any

BASE_KEY = 0x6775657374000000
UNIT_ATTENTION = 6  # sg3_utils' exit status: the command may be retried
LOGOUT = "iscsiadm -m node --logoutall=all >/dev/null 2>&1; iscsiadm -m node -o delete >/dev/null 2>&1; true"
# A pause between commands: unpaced, the emulated initiator VM takes a whole host core forking sg_persist and
# starves the controllers' VMs (their ZooKeeper sessions were seen suspending), which no real initiator does.
STORM = r"""
dev=$1; out=$2; base=$3; i=0; : > $out
while [ $i -lt 5000 ]; do
  i=$((i+1)); k=$(printf '0x%x' $((base + i)))
  if sg_persist --out --register-ignore --param-sark=$k $dev >/dev/null 2>&1; then
    echo "$i $(date +%s.%N)" >> $out
  fi
  sleep 0.1
done
"""


def initiator(rig: Any, script: str, check: bool = True, timeout: float = 120) -> str:
    out = rig.ssh("init", script, timeout=rig.scaled(timeout))
    if check and out.returncode != 0:
        raise AssertionError(f"initiator VM: rc {out.returncode}: {out.stderr.strip()[-1500:]}\n{out.stdout[-1500:]}")
    return out.stdout


def portal(rig: Any, node: str) -> str:
    from rigctl import agents

    return agents._addr(rig, agents.PORTAL_HOST[node]).split("/")[0]


def login(rig: Any, ifaces: dict[str, str]) -> dict[tuple[str, str], str]:
    """Sessions of each iface ({name: initiator IQN}) to both controllers' own portals (any earlier sessions
    of the VM are logged out first). Returns {(iface, portal address): /dev/sdX of LUN 0}."""
    from rigctl import agents

    first, second = (portal(rig, n) for n in rig.controllers)
    lines = [LOGOUT, "set -e"]
    for iface, iqn in ifaces.items():
        lines += [f"iscsiadm -m iface -I {iface} -o new >/dev/null 2>&1 || true",
                  f"iscsiadm -m iface -I {iface} -o update -n iface.initiatorname -v {iqn} >/dev/null"]
    pairs = [(iface, p) for iface in ifaces for p in (first, second)]
    for iface, p in pairs:
        lines += [f"iscsiadm -m node -o new -T {agents.IQN} -p {p}:3260 -I {iface} >/dev/null",
                  # the session is kept 60 s while it reconnects (open-iscsi's default is 120 s)
                  f"iscsiadm -m node -T {agents.IQN} -p {p}:3260 -I {iface} -o update "
                  "-n node.session.timeo.replacement_timeout -v 60 >/dev/null",
                  f"iscsiadm -m node -T {agents.IQN} -p {p}:3260 -I {iface} --login >/dev/null"]
    lines += ["udevadm settle", "iscsiadm -m session -P 3"]
    text = initiator(rig, "\n".join(lines))
    devices: dict[tuple[str, str], str] = {}
    iface = where = None
    lun0 = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Current Portal:"):
            where = line.split()[2].split(":")[0]
        elif line.startswith("Iface Name:"):
            iface = line.split()[2]
        elif line.startswith("scsi") and "Lun:" in line:
            lun0 = line.rstrip().endswith("Lun: 0")
        elif line.startswith("Attached scsi disk") and lun0 and iface and where:
            devices[(iface, where)] = "/dev/" + line.split()[3]
    want = set(pairs)
    assert want <= set(devices), f"sessions missing: {want - set(devices)}\n{text[-3000:]}"
    return {k: devices[k] for k in want}


def sg(rig: Any, command: str, tries: int = 8) -> tuple[int, str]:
    """An sg3_utils command in the initiator VM; unit attentions (a nexus that was reset, reservations
    preempted) are retried, as an initiator's SCSI layer does."""
    rc, out = 0, ""
    for _ in range(tries):
        r = rig.ssh("init", command, timeout=rig.scaled(60))
        rc, out = r.returncode, r.stdout + r.stderr
        if rc != UNIT_ATTENTION:
            break
        time.sleep(0.5)
    return rc, out


def keys(rig: Any, dev: str, tries: int = 10) -> list[int]:
    """The registered keys, read through ``dev``; retried while its session recovers (bounded)."""
    rc, out = 0, ""
    for _ in range(tries):
        rc, out = sg(rig, f"sg_persist --in --read-keys {dev}")
        if rc == 0:
            break
        time.sleep(rig.scaled(1.0))
    assert rc == 0, out
    return sorted(int(k, 16) for k in re.findall(r"^\s+(0x[0-9a-f]+)\s*$", out, re.M))


def unregister(rig: Any, devs: list[str]) -> None:
    """Remove this initiator port's registration through each device (an earlier storm's, on either target
    port): REGISTER AND IGNORE EXISTING KEY with key 0. Best effort."""
    for dev in devs:
        sg(rig, f"sg_persist --out --register-ignore --param-sark=0 {dev}")


def start(rig: Any, dev: str, base: int = BASE_KEY) -> None:
    """Register the first key, then start the storm in the background (it ends by itself after 5,000)."""
    rc, out = sg(rig, f"sg_persist --out --register-ignore --param-sark={base:#x} {dev}")
    assert rc == 0, out
    initiator(rig, f"cat > /root/storm.sh <<'EOS'\n{STORM}\nEOS\n"
                   f"setsid nohup sh /root/storm.sh {dev} /root/storm.log {base} </dev/null >/dev/null 2>&1 &")


def stop(rig: Any) -> list[tuple[int, float]]:
    """Stop the storm; the acknowledged changes: (number, initiator's wall clock)."""
    initiator(rig, "pkill -f '[s]torm.sh'; true")  # the bracket: not this shell's own command line
    log = initiator(rig, "cat /root/storm.log")
    return [(int(i), float(t)) for i, t in (line.split() for line in log.splitlines() if len(line.split()) == 2)]


def judge(acked: list[tuple[int, float]], held: list[int], base: int = BASE_KEY) -> dict[str, Any]:
    """What the new active holds against what was acknowledged. ``lost``: acknowledged changes it does not
    hold (0 when it holds the last acknowledged key or the one in flight after it); the window is their time
    at the storm's rate. ``violations``: sentences, empty when nothing acknowledged was lost."""
    last = acked[-1][0] if acked else 0
    ours = [k - base for k in held if base <= k <= base + last + 1]
    found = max(ours, default=-1)
    rate = (len(acked) - 1) / (acked[-1][1] - acked[0][1]) if len(acked) > 1 and acked[-1][1] > acked[0][1] else 0.0
    lost = max(0, last - found) if acked else 0
    out: dict[str, Any] = {"acknowledged": len(acked), "rate_per_s": round(rate, 2), "last_acknowledged": last,
                           "held": found, "lost": lost,
                           "window_s": round(lost / rate, 3) if rate else None, "violations": []}
    if len(acked) < 3:
        out["violations"].append(f"the PR-OUT storm hardly ran ({len(acked)} acknowledged): nothing was tested")
    if lost:
        out["violations"].append(f"acknowledged PR changes lost: the new active holds key #{found}, the initiator "
                                 f"had #{last} acknowledged ({lost} lost)")
    if len(ours) > 1:
        out["violations"].append(f"the storm's initiator port holds {len(ours)} keys at once: {sorted(ours)}")
    return out
