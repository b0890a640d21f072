"""The install gate's rules, driven by a fake clock: sessions, deferrals, installs, expiry."""

from __future__ import annotations

import logging
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.clock import FakeClock
from agent.install_gate import (
    GateLimits,
    GateRefusedError,
    InstallGate,
    InstallNotStartedError,
    Refusal,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gate(clock: FakeClock) -> InstallGate:
    return InstallGate(clock, GateLimits(max_session_s=600, max_defer_s=900, max_open_sessions=2))


def test_an_idle_gate_lets_one_install_begin_and_not_a_second(gate: InstallGate) -> None:
    assert gate.try_begin_install() is True
    assert gate.try_begin_install() is False
    gate.end_install()
    assert gate.try_begin_install() is True


def test_no_install_begins_while_a_session_is_open(gate: InstallGate) -> None:
    token = gate.session_start()
    assert gate.try_begin_install() is False
    gate.session_end(token)
    assert gate.try_begin_install() is True


def test_a_session_start_during_an_install_is_refused_as_installing(gate: InstallGate) -> None:
    assert gate.try_begin_install()
    with pytest.raises(GateRefusedError) as refused:
        gate.session_start()
    assert refused.value.reason is Refusal.INSTALLING
    assert gate.status().open_sessions == 0
    gate.end_install()
    assert gate.session_start()
    assert gate.counters()["sessions_refused_installing"] == 1


def test_install_waits_until_every_open_session_has_ended(gate: InstallGate) -> None:
    first, second = gate.session_start(), gate.session_start()
    gate.session_end(first)
    assert gate.try_begin_install() is False
    gate.session_end(second)
    assert gate.try_begin_install() is True


def test_sessions_beyond_the_cap_are_refused(gate: InstallGate) -> None:
    gate.session_start()
    gate.session_start()
    with pytest.raises(GateRefusedError) as refused:
        gate.session_start()
    assert refused.value.reason is Refusal.TOO_MANY_SESSIONS


def test_ending_an_unknown_session_is_refused_and_changes_nothing(gate: InstallGate) -> None:
    token = gate.session_start()
    with pytest.raises(GateRefusedError) as refused:
        gate.session_end("not-a-token")
    assert refused.value.reason is Refusal.UNKNOWN_SESSION
    assert gate.status().open_sessions == 1
    gate.session_end(token)
    with pytest.raises(GateRefusedError):
        gate.session_end(token)  # a token ends once


def test_a_session_never_ended_expires_after_the_maximum_and_is_counted_and_logged(
    gate: InstallGate, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    token = gate.session_start()
    clock.advance(599)
    assert gate.try_begin_install() is False
    with caplog.at_level(logging.WARNING, logger="agent.install_gate"):
        clock.advance(1)
        assert gate.try_begin_install() is True
    assert gate.counters()["sessions_expired"] == 1
    assert "expired" in caplog.text
    gate.end_install()
    with pytest.raises(GateRefusedError) as refused:
        gate.session_end(token)
    assert refused.value.reason is Refusal.UNKNOWN_SESSION


def test_a_deferral_holds_installs_for_exactly_its_duration(
    gate: InstallGate, clock: FakeClock
) -> None:
    assert gate.defer_install(300) == 300
    clock.advance(299.5)
    assert gate.try_begin_install() is False
    assert gate.status().deferred_for_s == pytest.approx(0.5)
    clock.advance(0.5)
    assert gate.try_begin_install() is True


def test_a_shorter_later_deferral_never_shortens_an_earlier_one(
    gate: InstallGate, clock: FakeClock
) -> None:
    gate.defer_install(600)
    clock.advance(100)
    assert gate.defer_install(10) == 500
    clock.advance(400)
    assert gate.try_begin_install() is False


@pytest.mark.parametrize("seconds", [0, -5, 901, float("inf")])
def test_a_deferral_outside_its_bounds_is_refused(gate: InstallGate, seconds: float) -> None:
    with pytest.raises(GateRefusedError) as refused:
        gate.defer_install(seconds)
    assert refused.value.reason is Refusal.DEFER_OUT_OF_BOUNDS
    assert gate.try_begin_install() is True


def test_a_deferral_during_an_install_is_refused_as_installing(gate: InstallGate) -> None:
    assert gate.try_begin_install()
    with pytest.raises(GateRefusedError) as refused:
        gate.defer_install(60)
    assert refused.value.reason is Refusal.INSTALLING


def test_ending_an_install_that_never_began_raises(gate: InstallGate) -> None:
    with pytest.raises(InstallNotStartedError):
        gate.end_install()
    assert gate.try_begin_install() is True  # the failed call left no install running


def test_limits_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        GateLimits(max_session_s=0)
    with pytest.raises(ValueError, match="positive"):
        GateLimits(max_open_sessions=0)


def test_concurrent_sessions_and_installs_never_overlap(clock: FakeClock) -> None:
    gate = InstallGate(clock, GateLimits(max_open_sessions=64))
    overlaps: list[str] = []
    barrier = threading.Barrier(8)

    def app() -> None:
        barrier.wait()
        for _ in range(300):
            try:
                token = gate.session_start()
            except GateRefusedError:
                continue
            if gate.status().installing:
                overlaps.append("session open while installing")
            gate.session_end(token)

    def updater() -> None:
        barrier.wait()
        for _ in range(300):
            if gate.try_begin_install():
                if gate.status().open_sessions:
                    overlaps.append("install while a session is open")
                gate.end_install()

    threads = [threading.Thread(target=app) for _ in range(6)]
    threads += [threading.Thread(target=updater) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []
    counters = gate.counters()
    assert counters["sessions_started"] == counters["sessions_ended"]


class GateMachine(RuleBasedStateMachine):
    """Any interleaving of the application's and the updater's calls keeps the gate's promises."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.limits = GateLimits(max_session_s=100, max_defer_s=50, max_open_sessions=3)
        self.gate = InstallGate(self.clock, self.limits)
        self.sessions: dict[str, float] = {}  # the model: token -> start
        self.deferred_until = float("-inf")
        self.installing = False

    def _expire_model(self) -> None:
        now = self.clock.monotonic()
        self.sessions = {
            t: s for t, s in self.sessions.items() if now - s < self.limits.max_session_s
        }

    @rule(seconds=st.floats(min_value=0, max_value=120))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def session_start(self) -> None:
        self._expire_model()
        if self.installing or len(self.sessions) >= self.limits.max_open_sessions:
            expected = Refusal.INSTALLING if self.installing else Refusal.TOO_MANY_SESSIONS
            with pytest.raises(GateRefusedError) as refused:
                self.gate.session_start()
            assert refused.value.reason is expected
            return
        self.sessions[self.gate.session_start()] = self.clock.monotonic()

    @rule(data=st.data())
    def session_end(self, data: st.DataObject) -> None:
        self._expire_model()
        token = data.draw(st.sampled_from([*self.sessions, "never-issued"]))
        if token in self.sessions:
            self.gate.session_end(token)
            del self.sessions[token]
        else:
            with pytest.raises(GateRefusedError):
                self.gate.session_end(token)

    @rule(seconds=st.floats(min_value=-10, max_value=80, allow_nan=False))
    def defer_install(self, seconds: float) -> None:
        self._expire_model()
        now = self.clock.monotonic()
        if self.installing or not 0 < seconds <= self.limits.max_defer_s:
            with pytest.raises(GateRefusedError):
                self.gate.defer_install(seconds)
            return
        held = self.gate.defer_install(seconds)
        self.deferred_until = max(self.deferred_until, now + seconds)
        assert held == pytest.approx(self.deferred_until - now)

    @rule()
    def try_begin_install(self) -> None:
        self._expire_model()
        may = (
            not self.installing
            and not self.sessions
            and self.clock.monotonic() >= self.deferred_until
        )
        assert self.gate.try_begin_install() is may
        self.installing = self.installing or may

    @precondition(lambda self: self.installing)
    @rule()
    def end_install(self) -> None:
        self.gate.end_install()
        self.installing = False

    @invariant()
    def the_gate_agrees_with_the_model(self) -> None:
        self._expire_model()
        status = self.gate.status()
        assert status.installing is self.installing
        assert status.open_sessions == len(self.sessions)
        assert not (status.installing and status.open_sessions)


GateMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_any_interleaving_of_calls_keeps_the_gate_rules = GateMachine.TestCase
