"""The fault catalog: each fault injects itself into the running rig, waits for what it expects, and says
what the initiator may see (its Budget). Faults that need healing leave that to Cluster.restore().

Budgets are in terms of the session timeout S of the rig's configuration (vagrant/rigctl/agents.TIMING).
What a fault should cause depends on the peer link (on in the rig unless HACONTROL_RIG_PEER_LINK=0): with it,
a dead or frozen active is taken over after the link's silence instead of the session expiry, and an active
cut from ZooKeeper keeps serving on the standby's promise instead of failing over.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.chaos.invariants import Budget
from tests.chaos.rigchaos import Cluster, Mark

CRASH_DROPIN = "/run/systemd/system/hacontrol.service.d/chaos-crash.conf"
CRASH_ONCE = "/run/hacontrol-chaos-crashed"
REBOOT_S = 90.0  # watchdog reset + boot + agent start of a rig controller, with room for a loaded host


@dataclass
class Ctx:
    cluster: Cluster
    active: str
    standby: str
    rng: random.Random

    @property
    def rig(self) -> Any:
        return self.cluster.rig

    @property
    def s(self) -> float:
        return self.cluster.session_timeout_s

    @property
    def link(self) -> bool:
        return self.cluster.peer_link

    def wait_led_again(self, m: Mark) -> None:
        """After ZooKeeper comes back: wait until a controller leads under a live session, and note how long it
        took. Every session may have expired meanwhile, and reconnecting (a connect attempt still waiting on a
        dropped SYN, then the new session, then the election) takes a few seconds on the emulated guests; the
        trial is judged after that, not after a fixed sleep. Bounded: a cluster that never leads again fails
        the trial on its epoch count."""
        start = time.monotonic()
        for _ in range(int((4 * self.s + 30) / 0.5) + 1):
            if self.cluster.active() is not None:
                m.notes.append(f"a controller led again {time.monotonic() - start:.1f} s after ZooKeeper returned")
                return
            time.sleep(0.5)
        m.notes.append(f"no controller led within {time.monotonic() - start:.0f} s after ZooKeeper returned")

    def wait_active(self, node: str, timeout_s: float) -> float | None:
        """Seconds until ``node`` is the active controller, or None."""
        start = time.monotonic()
        for _ in range(int(timeout_s / 0.5) + 1):
            if self.cluster.active() == node:
                return time.monotonic() - start
            time.sleep(0.5)
        return None


@dataclass(frozen=True)
class Fault:
    name: str
    run: Callable[[Ctx, Mark], None]
    budget: Callable[[float], Budget]
    ci: bool = False
    about: str = ""


def _failover(s: float, extra: float = 0.0) -> Budget:
    return Budget(io_pause_s=s + 6.0 + extra, epoch_changes=(1, 1))


def _nothing(s: float) -> Budget:
    return Budget(io_pause_s=2.0, epoch_changes=(0, 0))


def kill_agent(c: Ctx, m: Mark) -> None:
    m.now()
    c.rig.kill_agent(c.active)
    c.wait_active(c.standby, 6 * c.s + 30)


def freeze_agent(factor: float) -> Callable[[Ctx, Mark], None]:
    """A short freeze stays under what detects a dead active (``factor`` of the session, or of the peer link's
    silence when the link is on); a long one (factor > 1) is well past both."""
    def run(c: Ctx, m: Mark) -> None:
        unit = c.cluster.dead_after_s if c.link and factor < 1 else c.s
        m.params["seconds"] = seconds = round(factor * unit, 2)
        m.now()
        c.rig.freeze_agent(c.active, seconds)
        if factor > 1:
            c.wait_active(c.standby, 6 * c.s + 30)
        else:
            time.sleep(2 * c.s)
    return run


def freeze_vm(c: Ctx, m: Mark) -> None:
    m.params["seconds"] = seconds = round(c.rng.uniform(2, 3) * c.s, 2)
    m.now()
    try:
        c.rig.freeze_vm(c.active, seconds)  # the peer powers the frozen VM off meanwhile: resuming may fail
    except Exception as exc:
        m.notes.append(f"resume after freeze: {exc}")
    c.wait_active(c.standby, 6 * c.s + 30)


def power_off(c: Ctx, m: Mark) -> None:
    m.now()
    c.rig.power_off(c.active)
    c.wait_active(c.standby, 6 * c.s + 30)


def partition(target: str, expect_failover: bool) -> Callable[[Ctx, Mark], None]:
    """``expect_failover``: without the peer link (a ZooKeeper partition fails over only then)."""
    def run(c: Ctx, m: Mark) -> None:
        m.params["seconds"] = seconds = round(c.rng.uniform(3, 5) * c.s, 2)
        m.now()
        c.rig.partition(c.active, target)
        if expect_failover and not (target == "zk" and c.link):
            c.wait_active(c.standby, 6 * c.s + 30)
        else:
            time.sleep(seconds)
        c.rig.heal()
        if target == "zk":
            c.wait_led_again(m)
    return run


def _zk_partition_budget(s: float) -> Budget:
    """Without the link: a failover. With it: the active serves on (its session expires meanwhile, so it leads
    again under a new epoch after the heal: one epoch change, no pause). Both are allowed here; the trial's
    record says which it was (active_before/active_after)."""
    return Budget(io_pause_s=s + 6.0, epoch_changes=(1, 1))


def standby_isolated(c: Ctx, m: Mark) -> None:
    m.now()
    for target in ("zk", "peer", "initiators"):
        c.rig.partition(c.standby, target)
    time.sleep(3 * c.s)
    c.rig.heal()


def zk_leader_loss(c: Ctx, m: Mark) -> None:
    modes = c.rig.zk_modes()
    members = list(c.rig.topology.zookeeper.members)
    leader = next((i + 1 for i, a in enumerate(members) if modes.get(a) == "leader"), 1)
    m.params["member"] = leader
    m.now()
    c.rig.zk_stop(leader)
    time.sleep(3 * c.s)
    c.rig.zk_start(leader)


def zk_quorum_loss(c: Ctx, m: Mark) -> None:
    m.params["seconds"] = seconds = round(c.rng.uniform(1, 3) * c.s, 2)
    victims = [1, 2]
    m.now()
    for member in victims:
        c.rig.zk_stop(member)
    time.sleep(seconds)
    for member in victims:
        c.rig.zk_start(member)
    time.sleep(2 * c.s)


def crash_mid_takeover(c: Ctx, m: Mark) -> None:
    """The standby will die right after fencing (before ALUA/VIPs); then the active is powered off.

    The crashed agent held the hardware watchdog, so its controller is reset ~2 s later (as it should be: an
    active that stops running its agent must not keep serving). The rig's agents are enabled at boot while they
    run (rigctl.agents), as on a production controller, so the rebooted standby rejoins and takes over: that
    second takeover is what the trial's budget (2-3 epochs) expects. The crash drop-in lives in /run: the
    reboot removes it.
    """
    drop_in = f"[Service]\nEnvironment=HACONTROL_FAULT_CRASH_AFTER=FencePeer HACONTROL_FAULT_CRASH_ONCE={CRASH_ONCE}\n"
    boot_id = "cat /proc/sys/kernel/random/boot_id"
    boot_before = c.rig.ssh(c.standby, boot_id, check=True, timeout=30).stdout.strip()
    c.rig.ssh(c.standby, f"rm -f {CRASH_ONCE}; mkdir -p $(dirname {CRASH_DROPIN}) && cat > {CRASH_DROPIN} && "
                         "systemctl daemon-reload && sync && systemctl restart hacontrol.service",
              input_text=drop_in, check=True, timeout=120)
    try:
        for _ in range(120):
            if c.cluster.healthy() == c.active:
                break
            time.sleep(1)
        m.now()
        c.rig.power_off(c.active)
        c.wait_active(c.standby, 10 * c.s + 60)
    finally:
        c.rig.ensure_running(c.standby)
        c.rig.ssh(c.standby, f"rm -f {CRASH_DROPIN}; systemctl daemon-reload", timeout=60)
    boot_after = c.rig.ssh(c.standby, boot_id, timeout=30).stdout.strip()
    crashed = "1" in c.rig.ssh(c.standby, f"test -e {CRASH_ONCE} && echo 1", timeout=30).stdout
    if boot_after and boot_after != boot_before:
        m.notes.append("standby crashed after FencePeer; its hardware watchdog reset it and it rejoined at boot")
    else:
        m.notes.append("standby crashed after FencePeer" if crashed else "the crash point was not reached")


def disk_path_loss(c: Ctx, m: Mark) -> None:
    m.now()
    c.rig.fail_disk_path(c.active)
    c.wait_active(c.standby, 6 * c.s + 60)
    c.rig.heal()


def planned(back_to_back: bool) -> Callable[[Ctx, Mark], None]:
    def run(c: Ctx, m: Mark) -> None:
        from rigctl import agents

        m.now()
        out = agents.hactl(c.rig, "failover", "--to", c.standby, "--json", timeout=120)
        m.notes.append(out.stdout.strip()[-300:] or out.stderr.strip()[-300:])
        if back_to_back:
            time.sleep(1.0)
            out = agents.hactl(c.rig, "failover", "--to", c.active, "--json", timeout=120)
            m.notes.append(out.stdout.strip()[-300:] or out.stderr.strip()[-300:])
        time.sleep(2.0)
    return run


def zk_outage(c: Ctx, m: Mark) -> None:
    """Every ZooKeeper member stopped for 3-5 S (every session expires), then started again."""
    m.params["seconds"] = seconds = round(c.rng.uniform(3, 5) * c.s, 2)
    members = list(range(1, len(c.rig.topology.zookeeper.members) + 1))
    m.now()
    for member in members:
        c.rig.zk_stop(member)
    time.sleep(seconds)
    for member in members:
        c.rig.zk_start(member)
    c.wait_led_again(m)


def _zk_outage_budget(s: float) -> Budget:
    """With the link the datastore stays up (no pause, no error) and the active leads again afterwards (one
    epoch change); without it, it stops for the outage (errors allowed, as for a quorum loss)."""
    return Budget(io_pause_s=6 * s + 10, epoch_changes=(0, 1))


def peer_lossy(c: Ctx, m: Mark) -> None:
    m.params["seconds"] = seconds = 30
    m.now()
    c.rig.partition(c.active, "peer-lossy")
    time.sleep(seconds)
    c.rig.heal()


def lossy_zk(c: Ctx, m: Mark) -> None:
    m.params["seconds"] = seconds = 30
    m.now()
    c.rig.partition(c.active, "zk-lossy")
    time.sleep(seconds)
    c.rig.heal()


def pr_storm(how: str) -> Callable[[Ctx, Mark], None]:
    """A guest cluster changing its reservation key over and over through the active when the active dies
    (``how``: its agent killed, or the VM powered off): no change the initiator saw acknowledged may be missing
    on the new active (tests/chaos/prstorm.py). The storm registers only (no reservation), so the probe's
    writes go on as in any failover."""
    def run(c: Ctx, m: Mark) -> None:
        from tests.chaos import prstorm

        rig = c.rig
        dev = prstorm.login(rig, {"hacpra": rig.topology.node_iqn(rig.topology.initiators[0])})
        storm_dev = dev[("hacpra", prstorm.portal(rig, c.active))]
        read_dev = dev[("hacpra", prstorm.portal(rig, c.standby))]
        m.params["how"] = how
        base = prstorm.BASE_KEY + c.rng.randrange(1, 1 << 16) * (1 << 16)  # this trial's keys only
        try:
            prstorm.unregister(rig, [storm_dev, read_dev])
            prstorm.start(rig, storm_dev, base)
            time.sleep(c.rng.uniform(6.0, 10.0) * max(1.0, rig.speed_factor))
            m.now()
            if how == "power-off":
                rig.power_off(c.active)
            else:
                rig.kill_agent(c.active)
            acked = prstorm.stop(rig)  # at once: what follows the fault is not the question
            c.wait_active(c.standby, 6 * c.s + 30)
            result = prstorm.judge(acked, prstorm.keys(rig, read_dev), base)
            prstorm.unregister(rig, [read_dev, storm_dev])
        finally:
            prstorm.initiator(rig, prstorm.LOGOUT, check=False)
        m.violations.extend(result.pop("violations"))
        m.params["pr_storm"] = result
    return run


CATALOG: dict[str, Fault] = {f.name: f for f in (
    Fault("kill-agent", kill_agent, _failover, ci=True, about="kill -9 of the active agent"),
    Fault("freeze-agent-short", freeze_agent(0.4), _nothing,
          about="SIGSTOP the active agent for 0.4 S (0.4 of the peer link's silence when the link is on)"),
    Fault("freeze-agent-long", freeze_agent(2.5), _failover, about="SIGSTOP the active agent for 2.5 S"),
    Fault("freeze-vm", freeze_vm, lambda s: _failover(s, 10.0), about="pause the active VM for 2-3 S"),
    Fault("power-off", power_off, _failover, ci=True, about="power the active VM off"),
    Fault("partition-zk", partition("zk", True), _zk_partition_budget, ci=True,
          about="active cut from ZooKeeper (fails over without the peer link; serves on with it)"),
    Fault("partition-peer", partition("peer", False), _nothing,
          about="active cut from its peer on every network (both peer-link paths)"),
    Fault("peer-link-lossy", peer_lossy, _nothing, about="10 % packet loss on the interconnect for 30 s"),
    Fault("zk-outage", zk_outage, _zk_outage_budget, ci=True,
          about="every ZooKeeper member stopped for 3-5 S (the peer link keeps the datastore up)"),
    Fault("partition-initiators", partition("initiators", False),
          lambda s: Budget(io_pause_s=5 * s + 6, epoch_changes=(0, 0), io_errors_allowed=True),
          about="active cut from the initiators (hacontrol cannot see it: I/O waits for the heal)"),
    Fault("standby-isolated", standby_isolated, _nothing, about="standby cut from everything"),
    Fault("zk-leader-loss", zk_leader_loss, _nothing, about="kill the ZooKeeper leader member"),
    Fault("zk-quorum-loss", zk_quorum_loss,
          lambda s: Budget(io_pause_s=6 * s + 10, epoch_changes=(0, 1)), about="stop 2 of 3 ZooKeeper members"),
    # A double fault: the active is off and the new active dies mid-takeover, so nothing serves until the crashed
    # controller has been reset by its watchdog, has booted and has taken over again: the budget includes a reboot
    # (REBOOT_S: a TCG guest here; measured pauses 63.6 s and 53.0 s in all; real servers boot slower).
    Fault("crash-mid-takeover", crash_mid_takeover,
          lambda s: Budget(io_pause_s=4 * s + REBOOT_S, epoch_changes=(2, 3)),
          about="the new active dies after fencing, before ALUA; its watchdog resets it; it rejoins at boot"),
    Fault("disk-path-loss", disk_path_loss,
          lambda s: Budget(io_pause_s=s + 20, epoch_changes=(1, 1), io_errors_allowed=True),
          about="the active loses its path to the shelf"),
    # Planned: the goal is a pause under 1 s; the budget leaves room for TCG guests (reported, not hidden).
    Fault("planned-switchover", planned(False), lambda s: Budget(io_pause_s=2.0, epoch_changes=(1, 1)), ci=True,
          about="hactl failover under load"),
    Fault("back-to-back", planned(True), lambda s: Budget(io_pause_s=2.0, epoch_changes=(2, 2)),
          about="two planned switchovers in a row"),
    Fault("lossy-zk", lossy_zk, _nothing, about="10 % packet loss between the active and ZooKeeper for 30 s"),
    Fault("pr-storm-kill-agent", pr_storm("kill-agent"), _failover, ci=True,
          about="kill -9 of the active agent during a PR-OUT storm: no acknowledged PR change lost"),
    Fault("pr-storm-power-off", pr_storm("power-off"), _failover,
          about="power the active VM off during a PR-OUT storm: no acknowledged PR change lost"),
)}
