"""The timing dials of a controller pair, and the rules that keep them safe.

The lease argument (docs/architecture.md, "Why the lease is safe"):
ZooKeeper expires our session no earlier than ``session_timeout_s`` after the
servers last heard from us, and they heard from us no earlier than we sent
our last successful request (``lease_confirmed_at``). The peer can only take
over after that expiry. So an active agent that stops serving before
``lease_confirmed_at + demote_deadline_s`` is safe as long as
``demote_deadline_s`` plus the time one tick can take stays below the session
timeout, and the watchdog (``session_timeout_s - watchdog_margin_s`` after
the last kick) resets a node whose agent could not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from hacontrol.core.problems import Problem


@dataclass(frozen=True)
class Timing:
    session_timeout_s: float = 2.0
    loop_interval_s: float = 0.1
    demote_deadline_s: float = 1.0
    watchdog_margin_s: float = 0.4
    operation_timeout_s: float = 0.2
    fence_retry_s: float = 1.0
    standby_settle_s: float = 0.5
    switchover_timeout_s: float = 30.0
    startup_grace_s: float = 5.0
    storage_grace_s: float = 1.0
    heartbeat_interval_s: float = 0.1  # peer link: one heartbeat per path this often
    peer_dead_after_s: float = 0.3  # peer link: silence on every path for this long counts as a dead peer

    @property
    def watchdog_timeout_s(self) -> float:
        """How long after the last kick the watchdog resets the node."""
        return self.session_timeout_s - self.watchdog_margin_s

    @property
    def kick_window_s(self) -> float:
        """A watchdog kick is allowed only this soon after a lease confirmation: a kick at ``c + margin`` fires
        at ``c + session_timeout_s`` at the latest, when the servers may expire us. (The device may round its
        timeout down to whole seconds: it then fires sooner, never later.) The whole margin, not one tick: a
        loaded controller's round trip may outlast a tick, and a kick refused while the lease still holds lets
        the watchdog reset a healthy active."""
        return self.watchdog_margin_s

    @property
    def worst_demote_s(self) -> float:
        """Latest moment, after the last lease confirmation, by which a healthy agent has stopped serving.

        The deadline is noticed at most one loop interval late, and demoting
        takes at most one operation timeout per step (ALUA, then addresses).
        """
        return self.demote_deadline_s + self.loop_interval_s + 2 * self.operation_timeout_s

    @property
    def watchdog_slack_s(self) -> float:
        """Time between the agent's own worst-case demotion and the watchdog reset (must be ≥ 0)."""
        return self.watchdog_timeout_s - self.worst_demote_s

    def validate(self, prefix: str = "timing") -> list[Problem]:
        """Every problem with this set of dials, all at once (empty when safe)."""
        problems: list[Problem] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                problems.append(
                    Problem(f"{prefix}.{f.name}", value, "must be a positive number of seconds",
                            "give a positive number such as the default")
                )
        if problems:
            return problems
        problems.extend(self._relations(prefix))
        return problems

    def _relations(self, prefix: str) -> list[Problem]:
        p: list[Problem] = []
        s = self.session_timeout_s
        if s < 0.5:
            p.append(Problem(f"{prefix}.session_timeout_s", s, "ZooKeeper cannot keep a session this short",
                             "use 0.5 s or more (and tickTime ≤ half of it on the ensemble)"))
        if self.demote_deadline_s >= s:
            p.append(Problem(f"{prefix}.demote_deadline_s", self.demote_deadline_s,
                             f"must be shorter than session_timeout_s ({s}): the peer may take over at expiry",
                             f"set it to at most {round(s * 0.5, 3)} (half the session timeout)"))
        if self.loop_interval_s * 3 > self.demote_deadline_s:
            p.append(Problem(f"{prefix}.loop_interval_s", self.loop_interval_s,
                             "fewer than three lease renewals fit in demote_deadline_s",
                             f"set it to at most {round(self.demote_deadline_s / 3, 3)}"))
        if self.watchdog_margin_s >= s:
            p.append(Problem(f"{prefix}.watchdog_margin_s", self.watchdog_margin_s,
                             "leaves no watchdog timeout (session_timeout_s - watchdog_margin_s ≤ 0)",
                             f"set it below {s}"))
        elif self.watchdog_slack_s < 0:
            p.append(Problem(
                f"{prefix}.watchdog_margin_s", self.watchdog_margin_s,
                f"watchdog slack is negative ({self.watchdog_slack_s:.3f} s): the watchdog would reset a node "
                "that is still demoting on time (demote_deadline_s + loop_interval_s + "
                "2 × operation_timeout_s must fit in session_timeout_s - watchdog_margin_s)",
                "lower demote_deadline_s, operation_timeout_s or watchdog_margin_s, or raise session_timeout_s"))
        one_tick = self.loop_interval_s + self.operation_timeout_s
        if self.watchdog_margin_s < one_tick:
            p.append(Problem(
                f"{prefix}.watchdog_margin_s", self.watchdog_margin_s,
                "a kick is allowed only within watchdog_margin_s of a lease confirmation, and one tick "
                "(loop_interval_s + operation_timeout_s) must fit in it, or a healthy active could never kick",
                f"set it to at least {round(one_tick, 3)}"))
        p.extend(self._link_relations(prefix))
        if self.switchover_timeout_s <= s:
            p.append(Problem(f"{prefix}.switchover_timeout_s", self.switchover_timeout_s,
                             "a switchover must be allowed longer than one session timeout",
                             f"set it above {s}, e.g. {max(30.0, 4 * s)}"))
        return p

    def _link_relations(self, prefix: str) -> list[Problem]:
        p: list[Problem] = []
        if self.peer_dead_after_s < 2 * self.heartbeat_interval_s:
            p.append(Problem(f"{prefix}.peer_dead_after_s", self.peer_dead_after_s,
                             "one lost heartbeat would count as a dead peer (and power it off)",
                             f"set it to at least {round(2 * self.heartbeat_interval_s, 3)} (2 heartbeats), "
                             f"e.g. {round(3 * self.heartbeat_interval_s, 3)}"))
        if self.heartbeat_interval_s * 3 > self.demote_deadline_s:
            p.append(Problem(f"{prefix}.heartbeat_interval_s", self.heartbeat_interval_s,
                             "fewer than three heartbeats fit in demote_deadline_s: the failsafe could not renew the "
                             "peer's promise before it runs out",
                             f"set it to at most {round(self.demote_deadline_s / 3, 3)}"))
        return p
