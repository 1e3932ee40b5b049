"""hacontrol.service as systemd runs it on a real controller (issue #16).

1. `systemctl start` returns once the agent is READY, which means it has a session and a role: the unit's
   STATUS then names standby or active, never "starting"; while the rig's agents run they are enabled at boot.
2. `systemctl stop` of the active hands over to the peer inside systemd's watchdog (stretched over the
   hand-over): the unit ends with Result=success, no watchdog timeout or SIGABRT in the journal, the controller
   is not reset by its hardware watchdog, and the peer is active.
The time from "Starting" to "Started" in the journal is printed (a figure, not a limit).
"""

from __future__ import annotations

import datetime
import time

import pytest

pytestmark = pytest.mark.rig


@pytest.fixture(scope="module")
def cluster(rig):
    from rigctl import agents

    from tests.chaos.rigchaos import Cluster

    agents.reset(rig)
    agents.deploy(rig, agents.config_text(rig))
    agents.start(rig)
    yield Cluster(rig)
    agents.reset(rig)


def _show(rig, node: str, *props: str) -> dict[str, str]:
    out = rig.ssh(node, f"systemctl show hacontrol.service -p {' -p '.join(props)}", timeout=rig.scaled(30),
                  check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _start_seconds(rig, node: str) -> float | None:
    """The last start's "Starting" → "Started" in the journal (guest clock), or None."""
    cmd = ("journalctl -u hacontrol.service -o short-iso-precise --no-pager | "
           "grep -E 'systemd\\[1\\]: (Starting|Started) hacontrol' | tail -n 2")
    out = rig.ssh(node, cmd, timeout=rig.scaled(30)).stdout
    stamps = [datetime.datetime.fromisoformat(line.split()[0]) for line in out.splitlines()]
    return (stamps[1] - stamps[0]).total_seconds() if len(stamps) == 2 else None


def test_start_returns_ready_with_a_role_and_the_agent_is_enabled_at_boot(rig, cluster):
    cluster.restore()
    for node in rig.controllers:
        props = _show(rig, node, "ActiveState", "StatusText", "UnitFileState")
        assert props["ActiveState"] == "active", props
        assert not props["StatusText"].startswith("starting"), props
        assert props["StatusText"].split(":")[0] in ("standby", "active", "candidate", "promoting"), props
        assert props["UnitFileState"] == "enabled", props
        print(f"{node}: start to READY {_start_seconds(rig, node)} s; status {props['StatusText']!r}")


def test_stopping_the_active_hands_over_inside_the_watchdog(rig, cluster):
    active = cluster.restore()
    peer = cluster.peer(active)
    boot = rig.ssh(active, "cat /proc/sys/kernel/random/boot_id", timeout=rig.scaled(30), check=True).stdout.strip()
    since = rig.ssh(active, "date +%s", timeout=rig.scaled(30), check=True).stdout.strip()
    t0 = time.monotonic()
    rig.ssh(active, "systemctl stop hacontrol.service", timeout=rig.scaled(120), check=True)
    took = time.monotonic() - t0
    props = _show(rig, active, "Result", "ExecMainStatus", "ActiveState")
    journal = rig.ssh(active, f"journalctl -u hacontrol.service --since @{since} --no-pager", timeout=rig.scaled(30),
                      check=True).stdout
    assert props["Result"] == "success" and props["ActiveState"] == "inactive", (props, journal[-3000:])
    assert "atchdog timeout" not in journal and "SIGABRT" not in journal, journal[-3000:]
    assert "handed_over" in journal, journal[-3000:]
    assert rig.ssh(active, "cat /proc/sys/kernel/random/boot_id", timeout=rig.scaled(30)).stdout.strip() == boot
    deadline = time.monotonic() + rig.scaled(60)
    while cluster.active() != peer and time.monotonic() < deadline:
        time.sleep(1.0)
    assert cluster.active() == peer, cluster.status()
    print(f"systemctl stop of {active} took {took:.1f} s; {peer} is active")
