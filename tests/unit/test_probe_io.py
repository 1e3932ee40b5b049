"""The I/O engine against an in-memory LUN and a fake clock: outages, SCSI errors, UA, lost writes, stop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from hacontrol.probe.io import IoParams, run_io
from hacontrol.probe.report import Report
from hacontrol.probe.sense import Sense
from hacontrol.probe.session import ConnectionLost, Credentials, LoginFailed, ScsiResult, Target
from hacontrol.probe.stop import StopControl

A, B = "10.77.0.1:3260", "10.77.0.3:3260"
TARGET = Target("iqn.2024-01.org.hacontrol:t", 1, "iqn.2024-01.org.hacontrol:i")
UA_RESET = ScsiResult(2, Sense(0x6, 0x29, 0x00))
TRANSITIONING = ScsiResult(2, Sense(0x2, 0x04, 0x0A))
STANDBY = ScsiResult(2, Sense(0x2, 0x04, 0x0B))
CONFLICT = ScsiResult(0x18)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


@dataclass
class FakeLun:
    """An in-memory target. ``down`` holds (start, end, portals that stay up) windows, relative to t=0."""

    clock: FakeClock
    blocks: int = 100_000
    block_size: int = 512
    data: dict[int, bytes] = field(default_factory=dict)
    down: list[tuple[float, float, frozenset[str]]] = field(default_factory=list)
    ua_on_login: bool = True
    login_error: LoginFailed | None = None
    fault: Callable[[str, int | None, float], ScsiResult | None] = lambda op, lba, t: None
    drop_writes: Callable[[int], bool] = lambda lba: False
    logins: list[str] = field(default_factory=list)
    t0: float = 1000.0

    def t(self) -> float:
        return self.clock.now - self.t0

    def is_down(self, portal: str) -> bool:
        return any(start <= self.t() < end and portal not in up for start, end, up in self.down)


class FakeSession:
    def __init__(self, lun: FakeLun) -> None:
        self.lun = lun
        self.portal: str | None = None
        self._connected = False
        self._pending_ua = False

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self, portal: str, timeout_s: float) -> None:
        self.lun.clock.sleep(0.001)
        self.portal = portal
        if self.lun.login_error is not None:
            raise self.lun.login_error
        if self.lun.is_down(portal):
            raise LoginFailed(f"connect to {portal}: iscsi_service: socket error Connection refused(111).")
        self.lun.logins.append(portal)
        self._connected, self._pending_ua = True, self.lun.ua_on_login

    def close(self, logout_timeout_s: float = 1.0) -> None:
        self._connected = False

    def _command(self, op: str, lba: int | None) -> ScsiResult | None:
        if not self._connected:
            raise ConnectionLost("not logged in")
        self.lun.clock.sleep(0.001)
        if self.lun.is_down(self.portal or ""):
            self._connected = False
            raise ConnectionLost("read from socket failed")
        if self._pending_ua:
            self._pending_ua = False
            return UA_RESET
        return self.lun.fault(op, lba, self.lun.t())

    def read_capacity16(self, timeout_s: float = 5.0) -> ScsiResult:
        result = self._command("read_capacity", None)
        data = (self.lun.blocks - 1).to_bytes(8, "big") + self.lun.block_size.to_bytes(4, "big") + bytes(20)
        return result or ScsiResult(0, None, data)

    def write16(self, lba: int, data: bytes, block_size: int, timeout_s: float = 5.0) -> ScsiResult:
        result = self._command("write", lba)
        if result is None and not self.lun.drop_writes(lba):
            self.lun.data[lba] = data
        return result or ScsiResult(0)

    def read16(self, lba: int, blocks: int, block_size: int, timeout_s: float = 5.0) -> ScsiResult:
        result = self._command("read", lba)
        if result is not None:
            return result
        data = b"".join(self.lun.data.get(lba + i, bytes(block_size)) for i in range(blocks))
        return ScsiResult(0, None, data)


class NullLog:
    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def run(lun: FakeLun, stop: StopControl | None = None, **overrides) -> Report:
    params = dict(portals=(A,), target=TARGET, duration_s=2.0, interval_s=0.01)
    params.update(overrides)
    return run_io(IoParams(**params), session_factory=lambda _t: FakeSession(lun), clock=lun.clock,
                  sleep=lun.clock.sleep, stop=stop, log=NullLog())


@pytest.fixture
def lun() -> FakeLun:
    return FakeLun(FakeClock())


def test_clean_run(lun):
    report = run(lun)
    assert report.fatal is None and report.stopped_by == "duration"
    assert report.writes_attempted == report.writes_acknowledged == report.writes_verified > 150
    assert (report.writes_lost, report.writes_superseded, report.io_errors) == (0, 0, 0)
    assert report.reads == report.writes_acknowledged - 1  # each write read back on the next tick
    assert report.unit_attentions == 1 and report.errors_by_kind == {"unit_attention": 1}
    assert report.io_pause_s < 0.1 and report.pauses_over_1s == 0
    assert [e.event for e in report.connection_events] == ["logged_in", "logged_out"]
    assert report.verification_complete and report.region_blocks >= report.writes_attempted


def test_outage_moves_to_the_second_portal(lun):
    lun.down.append((0.5, 99.0, frozenset({B})))  # A dies at 0.5 s; B is up all along
    lun.down.append((0.5, 3.0, frozenset()))  # ... but B only answers from 3.0 s on
    report = run(lun, portals=(A, B), duration_s=5.0)
    assert report.writes_lost == 0 and report.io_errors == 0
    (outage,) = report.outages
    assert outage.cause == "connection_lost" and outage.lost_portal == A and outage.relogin_portal == B
    assert 0.5 <= outage.lost_t_s < outage.relogin_t_s <= outage.first_io_t_s
    assert outage.relogin_t_s >= 3.0 and outage.login_attempts > 2
    assert report.io_pause_s >= outage.relogin_t_s - outage.lost_t_s
    assert report.io_pause_start_s <= outage.lost_t_s and report.pauses_over_1s == 1
    assert [e.event for e in report.connection_events][:3] == ["logged_in", "lost", "logged_in"]
    assert report.errors_by_kind["login_failed"] == outage.login_attempts - 1
    assert report.unit_attentions == 2  # one per login: retried, not an application error


def test_scsi_errors_are_application_errors_with_names(lun):
    def fault(op, lba, t):
        if op == "write" and 1.5 <= t < 1.52:
            return CONFLICT
        return None

    lun.fault = fault
    report = run(lun)
    assert report.io_errors == report.errors_by_kind["scsi_error"] > 0
    assert "RESERVATION CONFLICT" in report.scsi_conditions
    assert report.writes_acknowledged == report.writes_attempted - report.io_errors
    assert report.writes_lost == 0  # failed writes were never acknowledged
    event = next(e for e in report.errors if e.kind == "scsi_error")
    assert event.status == "RESERVATION CONFLICT" and event.op == "write"


def test_alua_transitioning_is_retried_on_the_path_not_an_application_error(lun):
    lun.fault = lambda op, lba, t: TRANSITIONING if op == "write" and 1.0 <= t < 1.2 else None
    report = run(lun)
    assert report.io_errors == 0 and report.writes_lost == 0
    assert report.errors_by_kind["path_state"] > 0 and report.path_switches > 0
    event = next(e for e in report.errors if e.kind == "path_state")
    assert event.sense.code == "02/04/0A" and event.status == "CHECK CONDITION"
    assert report.io_pause_s >= 0.19  # the transition shows as a pause


def test_a_standby_path_makes_the_probe_use_the_other_portal(lun):
    """Like an ALUA initiator: 02/04/0B on one portal, the I/O goes to the next one."""
    session_portal = {"now": None}

    def fault(op, lba, t):
        return STANDBY if op == "write" and session_portal["now"] == A and t >= 1.0 else None

    original = FakeSession.connect

    def connect(self, portal, timeout_s):
        original(self, portal, timeout_s)
        session_portal["now"] = portal

    lun.fault = fault
    FakeSession.connect = connect
    try:
        report = run(lun, portals=(A, B))
    finally:
        FakeSession.connect = original
    assert report.io_errors == 0 and report.writes_lost == 0
    assert report.path_switches >= 1 and lun.logins[-1] == B
    assert any(e.event == "path_switch" and e.portal == A for e in report.connection_events)


def test_persistent_unit_attention_becomes_an_error(lun):
    lun.fault = lambda op, lba, t: UA_RESET if op == "write" and 1.0 <= t < 1.2 else None
    report = run(lun, max_unit_attentions=3)
    assert report.io_errors > 0 and report.unit_attentions > 3


def test_lost_writes_are_detected(lun):
    dropped = {10, 11, 12}
    lun.drop_writes = lambda lba: lba in dropped  # acknowledged, never stored
    report = run(lun, offset_blocks=0)
    assert report.writes_lost == 3
    assert {w.lba for w in report.lost_writes} == dropped
    assert report.io_errors == 3  # the in-run read-back saw it too
    assert report.errors_by_kind["data_mismatch"] == 3 and report.errors_by_kind["data_lost"] == 3
    assert report.failure_reason().startswith("3 of")


def test_offset_and_wrapping_region(lun):
    report = run(lun, region_blocks=50, offset_blocks=1000)
    assert min(lun.data) == 1000 and max(lun.data) == 1049
    assert report.writes_verified == 50 and report.writes_lost == 0
    assert report.writes_superseded == report.writes_acknowledged - 50


def test_stop_ends_io_and_still_verifies(lun):
    stop = StopControl()
    lun.fault = lambda op, lba, t: stop.request("signal:SIGTERM") if t > 0.5 and stop.reason is None else None
    report = run(lun, stop=stop, duration_s=60.0)
    assert report.stopped_by == "signal:SIGTERM" and report.duration_s < 1.0
    assert report.verification_complete and report.writes_verified == report.writes_acknowledged > 0


def test_second_stop_request_cuts_verification_short(lun):
    stop = StopControl()
    lun.fault = lambda op, lba, t: stop.request("signal:SIGINT") if t > 0.5 else None
    report = run(lun, stop=stop, duration_s=60.0)
    assert stop.aborted and not report.verification_complete
    assert report.verification_detail.startswith("stopped")
    assert report.failure_reason().startswith("verification incomplete (stopped")


def test_run_ends_while_the_target_is_down(lun):
    lun.down.append((1.0, 99.0, frozenset()))
    report = run(lun, duration_s=2.0, verify_budget_s=1.0)
    assert report.writes_lost > 0 and not report.verification_complete
    assert report.outages[0].relogin_t_s is None
    assert report.io_pause_s >= 0.9  # the stall up to the end of the I/O phase counts
    assert report.errors_by_kind["io_abandoned"] >= 1


def test_wrong_chap_fails_fast(lun):
    lun.login_error = LoginFailed("login at A: Failed to log in to target. Status: Authentication failure(513)", 0x0201)
    report = run(lun, duration_s=60.0)
    assert report.fatal.startswith("login failed at 10.77.0.1:3260") and "Authentication failure" in report.fatal
    assert report.writes_attempted == 0 and report.errors_by_kind == {"login_failed": 1}


def test_unusable_lun_is_fatal_with_the_decoded_sense(lun):
    lun.ua_on_login = False
    lun.fault = lambda op, lba, t: ScsiResult(2, Sense(0x5, 0x25, 0x00))
    report = run(lun)
    assert "LOGICAL UNIT NOT SUPPORTED" in report.fatal and report.writes_attempted == 0
    assert report.errors[0].sense.code == "05/25/00"


def test_report_never_holds_secrets(lun):
    target = Target(TARGET.iqn, 1, TARGET.initiator_name, Credentials("u", "hunter2hunter2", "m", "m-secret-xyz"))
    report = run(lun, target=target)
    assert report.chap == "mutual"
    text = report.to_json()
    assert "hunter2hunter2" not in text and "m-secret-xyz" not in text


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        run_io(IoParams(portals=(A,), target=TARGET, interval_s=0))
    with pytest.raises(ValueError, match="portal"):
        run_io(IoParams(portals=(), target=TARGET))
