"""Two agents running the real decide() in a simulated world, driven by hypothesis through faults.

Safety invariants (hacontrol.simulation.invariants.SAFETY) are checked after
every tick of every agent; liveness is checked by the `settle` rule: once
every fault is healed, exactly one controller is fully active within
`liveness_bound_s(timing)` and stays so.

Example counts: the `ci` hypothesis profile (tests/conftest.py) runs 300
state machines of up to 40 steps each; HYPOTHESIS_PROFILE=deep runs 3,000.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hacontrol.core.timing import Timing
from hacontrol.simulation.cluster import Cluster, Profile
from hacontrol.simulation.invariants import SAFETY, fully_active, liveness_bound_s, liveness_bound_with_link_s
from hacontrol.simulation.link import PATHS

NODES = st.sampled_from(["a", "b"])

# The model sends heartbeats once per step at most, so each timing's heartbeat interval is its loop interval.
TIMINGS = st.sampled_from([
    Timing(),
    Timing(session_timeout_s=4.0, loop_interval_s=0.2, demote_deadline_s=2.0, watchdog_margin_s=0.6,
           operation_timeout_s=0.4, heartbeat_interval_s=0.2, peer_dead_after_s=0.6),
    Timing(session_timeout_s=1.0, loop_interval_s=0.05, demote_deadline_s=0.5, watchdog_margin_s=0.2,
           operation_timeout_s=0.1, heartbeat_interval_s=0.05, peer_dead_after_s=0.15),
])

PROFILES = st.builds(
    Profile,
    pr=st.booleans(),
    alua=st.booleans(),
    power_fencing=st.booleans(),
    hardware_watchdog=st.booleans(),
    port_takeover=st.booleans(),
    peer_link=st.booleans(),
    fast_takeover=st.booleans(),
    failsafe=st.booleans(),
).filter(lambda p: (p.pr or p.power_fencing) and (p.alua or not p.port_takeover)
         and (p.power_fencing or not p.fast_takeover))


# Each protection layer must be safe on its own, so besides any mix of them the
# model also runs with the lease as the only thing between a stale active and
# initiator-visible errors (no watchdog, no power fencing), and with power
# fencing as the only fence (VIP-only failover, no reservations: the lab).
LEASE_ALONE = st.builds(Profile, pr=st.just(True), alua=st.booleans(), power_fencing=st.just(False),
                        hardware_watchdog=st.just(False), port_takeover=st.just(False))
POWER_ALONE = st.builds(Profile, pr=st.just(False), alua=st.just(False), power_fencing=st.just(True),
                        hardware_watchdog=st.just(False), port_takeover=st.just(False))
# The peer link on, with both of its uses, over any protection mix that allows a fast takeover.
WITH_LINK = st.builds(Profile, pr=st.booleans(), alua=st.booleans(), power_fencing=st.just(True),
                      hardware_watchdog=st.booleans(), port_takeover=st.booleans(), peer_link=st.just(True),
                      fast_takeover=st.just(True), failsafe=st.just(True)
                      ).filter(lambda p: p.alua or not p.port_takeover)
PATH = st.integers(0, PATHS - 1)


class TwoControllers(RuleBasedStateMachine):
    """The model the safety claims are made against (see docs/architecture.md)."""

    profiles = PROFILES

    @initialize(data=st.data(), timing=TIMINGS)
    def start(self, data: st.DataObject, timing: Timing) -> None:
        profile = data.draw(self.profiles, label="profile")
        self.cl = Cluster(timing, profile)
        self.cl.checks.extend(SAFETY)
        self.cl.advance(1.0)

    @rule(seconds=st.floats(0.05, 6.0), order=st.sampled_from([("a", "b"), ("b", "a")]),
          split=st.one_of(st.none(), st.integers(0, 3)))
    def wait(self, seconds: float, order: tuple[str, str], split: int | None) -> None:
        self.cl.advance(seconds, order, split)

    @rule(node=NODES)
    def crash_agent(self, node: str) -> None:
        self.cl.crash_agent(node)

    @rule(node=NODES)
    def restart_agent(self, node: str) -> None:
        self.cl.restart_agent(node)

    @rule(node=NODES, factor=st.floats(0.1, 3.0))
    def freeze(self, node: str, factor: float) -> None:
        """SIGSTOP the agent for a fraction or a multiple of the session timeout."""
        self.cl.freeze(node, factor * self.cl.timing.session_timeout_s)

    @rule(node=NODES)
    def power_cycle(self, node: str) -> None:
        self.cl.power_cycle(node)

    @rule(node=NODES, cut=st.booleans())
    def partition_from_zookeeper(self, node: str, cut: bool) -> None:
        self.cl.nodes[node].zk_reachable = not cut

    @rule(node=NODES, cut=st.booleans())
    def lose_disk_path(self, node: str, cut: bool) -> None:
        self.cl.nodes[node].disk_reachable = not cut

    @rule(node=NODES, broken=st.booleans())
    def break_fence_device(self, node: str, broken: bool) -> None:
        self.cl.nodes[node].fence_device_ok = not broken

    @rule(path=PATH, cut=st.booleans())
    def cut_link_path(self, path: int, cut: bool) -> None:
        self.cl.net.paths[path].cut = cut

    @rule(path=PATH, loss=st.sampled_from([0.0, 0.1, 0.5, 0.9]), seed=st.integers(0, 2**16))
    def lossy_link_path(self, path: int, loss: float, seed: int) -> None:
        self.cl.net.paths[path].loss = loss
        self.cl.net.rng.seed(seed)

    @rule(path=PATH, factor=st.sampled_from([0.0, 0.5, 1.0, 3.0]))
    def delay_link_path(self, path: int, factor: float) -> None:
        """Late heartbeats: a fraction or a multiple of the time after which silence means dead."""
        self.cl.net.paths[path].delay_s = factor * self.cl.timing.peer_dead_after_s

    @rule(on=st.booleans())
    def duplicate_link(self, on: bool) -> None:
        self.cl.net.duplicate = on

    @rule(count=st.integers(1, 20))
    def replay_link(self, count: int) -> None:
        self.cl.net.replay(count, self.cl.now)

    @rule(to=NODES)
    def switchover(self, to: str) -> None:
        self.cl.request_switchover(to)

    @rule(on=st.booleans())
    def maintenance(self, on: bool) -> None:
        self.cl.zk.maintenance = on

    @rule()
    def settle(self) -> None:
        """Liveness: with every fault healed, exactly one controller is active within the bound, and stays."""
        cl = self.cl
        cl.quiesce()
        bound = liveness_bound_with_link_s(cl.timing) if cl.profile.failsafe else liveness_bound_s(cl.timing)
        cl.advance(bound)
        active = fully_active(cl)
        assert len(active) == 1, (f"t={cl.now:.2f}: {len(active)} fully active controllers {bound:.2f}s after the "
                                  f"last fault; last plans: {[(c.name, c.last_plan) for c in cl.nodes.values()]}")
        mark = len(cl.log)
        cl.advance(3 * cl.timing.session_timeout_s)
        assert fully_active(cl) == active, f"t={cl.now:.2f}: active controller changed without a fault"
        moves = [(t, node, what) for t, node, what in cl.log[mark:] if "Ports" in what or "Vips" in what]
        assert not moves, f"addresses still moving once settled, without a fault: {moves[:6]}"

    @invariant()
    def leader_is_unique(self) -> None:
        if hasattr(self, "cl"):
            owners = [c.name for c in self.cl.nodes.values()
                      if self.cl.zk.leader is not None and self.cl.zk.leader[0] == c.name]
            assert len(owners) <= 1


class WithoutLink(TwoControllers):
    """Profiles without the peer link: its faults would be no-op steps (redefining a rule's method without
    @rule removes that rule from this machine)."""

    def cut_link_path(self, path: int, cut: bool) -> None: ...

    def lossy_link_path(self, path: int, loss: float, seed: int) -> None: ...

    def delay_link_path(self, path: int, factor: float) -> None: ...

    def duplicate_link(self, on: bool) -> None: ...

    def replay_link(self, count: int) -> None: ...


class LeaseAlone(WithoutLink):
    profiles = LEASE_ALONE


class PowerFencingAlone(WithoutLink):
    profiles = POWER_ALONE


class PeerLinkOn(TwoControllers):
    profiles = WITH_LINK


TestAnyProtectionMix = TwoControllers.TestCase
TestLeaseAlone = LeaseAlone.TestCase
TestPowerFencingAlone = PowerFencingAlone.TestCase
TestPeerLinkOn = PeerLinkOn.TestCase
