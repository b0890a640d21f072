"""The rollout planner: one example per rule, and a Hypothesis state machine for its invariants.

The planner is pure, so these tests drive ``step`` with events and a clock
that only moves when the test says so; each assertion reads the returned
state and actions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from server.access import Role
from server.rollout_planner import (
    FAILURES,
    IN_FLIGHT,
    MANUAL,
    SUCCESSES,
    TRANSITIONS,
    Aborted,
    AbortThreshold,
    Action,
    Approve,
    Cancel,
    Canceled,
    Completed,
    Decision,
    Delay,
    Event,
    GateOpened,
    MarkedTimedOut,
    Notify,
    OpenGate,
    Pause,
    Paused,
    PauseReason,
    Phase,
    PhaseAdvanced,
    Refused,
    Report,
    Resume,
    Resumed,
    RetryScheduled,
    Rollout,
    RolloutDefinition,
    RolloutStatus,
    Selected,
    Started,
    TerminalProgress,
    TerminalState,
    Withdraw,
    new_rollout,
    phase_quota,
    step,
)

T0 = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)
S = TerminalState
TARGET = "acme/kiosk-app-2.1.0.tar"


def _definition(**changes: object) -> RolloutDefinition:
    values: dict[str, object] = {
        "rollout_id": "r1",
        "target": TARGET,
        "created_by": "alice",
        "phases": (Phase(2, "count"), Phase(100, "percent")),
        "success_threshold": 1.0,
        "abort": AbortThreshold(failure_ratio=0.5, min_decided=10),
        "terminal_timeout_s": 600.0,
        "max_attempts": 1,
        "retry_backoff_s": 60.0,
        "retry_backoff_max_s": 300.0,
    }
    values.update(changes)
    return RolloutDefinition(**values)  # type: ignore[arg-type]  # keys are the field names above


def _ids(n: int) -> tuple[str, ...]:
    return tuple(f"t{i:02d}" for i in range(n))


def _started(n: int, **changes: object) -> Decision:
    rollout = new_rollout(_definition(**changes))
    return step(rollout, [Selected(_ids(n)), Approve("bob", Role.OPERATOR)], T0)


def _notified(actions: tuple[Action, ...]) -> list[str]:
    return [a.terminal_id for a in actions if isinstance(a, Notify)]


def _state(rollout: Rollout, terminal_id: str) -> TerminalState:
    return next(t.state for t in rollout.terminals if t.terminal_id == terminal_id)


def _succeed(rollout: Rollout, ids: list[str], now: datetime = T0) -> Decision:
    return step(rollout, [Report(i, S.SUCCEEDED) for i in ids], now)


# --- approval ------------------------------------------------------------------------------


def test_a_rollout_notifies_nobody_before_it_is_approved() -> None:
    decision = step(new_rollout(_definition()), [Selected(_ids(5))], T0)
    assert decision.rollout.status is RolloutStatus.AWAITING_APPROVAL
    assert _notified(decision.actions) == []


def test_the_creator_cannot_approve_their_own_rollout() -> None:
    rollout = new_rollout(_definition())
    decision = step(rollout, [Selected(_ids(5)), Approve("alice", Role.ADMIN)], T0)
    assert decision.rollout.status is RolloutStatus.AWAITING_APPROVAL
    assert decision.actions == (Refused(Approve("alice", Role.ADMIN), "approver_is_creator"),)


def test_a_viewer_or_vendor_cannot_approve() -> None:
    for role in (Role.VIEWER, Role.VENDOR):
        decision = step(new_rollout(_definition()), [Approve("bob", role)], T0)
        assert decision.actions == (Refused(Approve("bob", role), "approver_role_not_allowed"),)
        assert decision.rollout.status is RolloutStatus.AWAITING_APPROVAL


def test_another_operator_approves_and_the_first_phase_is_notified() -> None:
    decision = _started(5)
    assert decision.rollout.status is RolloutStatus.RUNNING
    assert decision.rollout.approved_by == "bob"
    assert decision.actions[0] == Started("bob")
    assert decision.actions[1:] == (Notify("t00", TARGET, 1), Notify("t01", TARGET, 1))


def test_a_second_approval_is_refused() -> None:
    decision = step(_started(5).rollout, [Approve("carol", Role.ADMIN)], T0)
    assert decision.actions == (Refused(Approve("carol", Role.ADMIN), "already_approved"),)


# --- phases and gates ----------------------------------------------------------------------


def test_percent_phases_round_up_and_are_cumulative() -> None:
    definition = _definition(phases=(Phase(10), Phase(50), Phase(100)))
    assert [phase_quota(definition, p, 15) for p in range(3)] == [2, 8, 15]
    assert phase_quota(definition, 0, 0) == 0


@given(
    sizes=st.lists(
        st.tuples(st.integers(1, 100), st.sampled_from(["count", "percent"])), max_size=4
    ),
    selected=st.integers(0, 500),
)
def test_phase_quotas_grow_with_the_phase_and_the_last_covers_every_terminal(
    sizes: list[tuple[int, Literal["count", "percent"]]], selected: int
) -> None:
    definition = _definition(phases=(*(Phase(n, unit) for n, unit in sizes), Phase(100)))
    quotas = [phase_quota(definition, p, selected) for p in range(len(definition.phases))]
    assert quotas == sorted(quotas)
    assert all(0 <= q <= selected for q in quotas)
    assert quotas[-1] == selected
    more = [phase_quota(definition, p, selected + 1) for p in range(len(definition.phases))]
    assert all(a <= b for a, b in zip(quotas, more, strict=True))


def test_the_next_phase_starts_only_after_every_terminal_of_this_one_succeeded() -> None:
    first = _started(5).rollout
    half = _succeed(first, ["t00"])
    assert _notified(half.actions) == []
    assert half.rollout.phase == 0
    done = _succeed(half.rollout, ["t01"])
    assert PhaseAdvanced(1, succeeded=2, total=2) in done.actions
    assert _notified(done.actions) == ["t02", "t03", "t04"]


def test_a_delay_gate_holds_the_next_phase_until_its_time() -> None:
    phases = (Phase(1, "count"), Phase(100, gate=Delay(3600)))
    passed = _succeed(_started(3, phases=phases).rollout, ["t00"])
    assert _notified(passed.actions) == []
    assert passed.wake_at == T0 + timedelta(seconds=3600)
    early = step(passed.rollout, [], T0 + timedelta(seconds=3599))
    assert _notified(early.actions) == []
    on_time = step(early.rollout, [], T0 + timedelta(seconds=3600))
    assert on_time.actions[0] == GateOpened(1, by=None)
    assert _notified(on_time.actions) == ["t01", "t02"]


def test_a_manual_gate_opens_only_on_an_operator_decision() -> None:
    phases = (Phase(1, "count"), Phase(100, gate=MANUAL))
    passed = _succeed(_started(3, phases=phases).rollout, ["t00"])
    later = step(passed.rollout, [], T0 + timedelta(days=30))
    assert _notified(later.actions) == []
    assert later.wake_at is None
    opened = step(later.rollout, [OpenGate("carol")], T0 + timedelta(days=30))
    assert opened.actions == (
        GateOpened(1, "carol"),
        Notify("t01", TARGET, 1),
        Notify("t02", TARGET, 1),
    )


def test_open_gate_is_refused_when_no_manual_gate_waits() -> None:
    decision = step(_started(3).rollout, [OpenGate("carol")], T0)
    assert decision.actions == (Refused(OpenGate("carol"), "no_gate_waiting"),)


def test_the_last_phase_completes_the_rollout() -> None:
    rollout = _succeed(_started(3).rollout, ["t00", "t01"]).rollout
    decision = step(rollout, [Report("t02", S.ALREADY_INSTALLED)], T0)
    assert decision.actions == (Completed(succeeded=3, total=3),)
    assert decision.rollout.status is RolloutStatus.COMPLETED
    assert decision.wake_at is None


def test_no_terminal_selected_means_nothing_completes() -> None:
    decision = step(new_rollout(_definition()), [Approve("bob", Role.OPERATOR)], T0)
    assert decision.rollout.status is RolloutStatus.RUNNING
    assert decision.actions == (Started("bob"),)


# --- thresholds ----------------------------------------------------------------------------


def test_a_phase_below_its_success_threshold_pauses_and_does_not_advance() -> None:
    rollout = _started(5).rollout
    decision = step(rollout, [Report("t00", S.SUCCEEDED), Report("t01", S.ROLLED_BACK)], T0)
    assert decision.rollout.status is RolloutStatus.PAUSED
    assert decision.rollout.pause_reason is PauseReason.BELOW_SUCCESS_THRESHOLD
    assert decision.rollout.phase == 0
    assert Paused(PauseReason.BELOW_SUCCESS_THRESHOLD) in decision.actions
    assert _notified(decision.actions) == []


def test_resuming_below_threshold_gives_the_failed_terminals_a_fresh_round() -> None:
    rollout = _started(5).rollout
    paused = step(rollout, [Report("t00", S.SUCCEEDED), Report("t01", S.ROLLED_BACK)], T0)
    resumed = step(paused.rollout, [Resume("carol")], T0)
    assert resumed.actions == (Resumed("carol"), Notify("t01", TARGET, 2))  # numbers keep growing
    assert resumed.rollout.phase == 0
    passed = _succeed(resumed.rollout, ["t01"])
    assert _notified(passed.actions) == ["t02", "t03", "t04"]


def test_a_lower_success_threshold_lets_a_phase_with_failures_advance() -> None:
    rollout = _started(5, success_threshold=0.5).rollout
    decision = step(rollout, [Report("t00", S.SUCCEEDED), Report("t01", S.REJECTED)], T0)
    assert PhaseAdvanced(1, succeeded=1, total=2) in decision.actions


def test_the_abort_threshold_stops_the_rollout_once_enough_terminals_decided() -> None:
    phases = (Phase(100),)
    rollout = _started(6, phases=phases, abort=AbortThreshold(0.3, min_decided=3)).rollout
    reports = [Report("t00", S.FAILED), Report("t01", S.FAILED), Report("t04", S.INSTALLING)]
    two = step(rollout, reports, T0)
    assert two.rollout.status is RolloutStatus.RUNNING  # only 2 decided, fewer than 3
    third = step(two.rollout, [Report("t02", S.DOWNLOADING), Report("t03", S.SUCCEEDED)], T0)
    assert third.actions == (
        Aborted(failed=2, decided=3),
        Withdraw("t02", TARGET),  # t04 is installing: too late to withdraw
        Withdraw("t05", TARGET),
    )
    assert third.rollout.status is RolloutStatus.ABORTED


def test_after_an_abort_in_flight_terminals_still_report_but_nothing_is_sent() -> None:
    phases = (Phase(100),)
    rollout = _started(4, phases=phases, abort=AbortThreshold(0.3, min_decided=2)).rollout
    aborted = step(rollout, [Report("t00", S.FAILED), Report("t01", S.FAILED)], T0)
    assert aborted.rollout.status is RolloutStatus.ABORTED
    late = step(aborted.rollout, [Report("t02", S.SUCCEEDED), Approve("x", Role.ADMIN)], T0)
    assert _state(late.rollout, "t02") is S.SUCCEEDED
    assert late.actions == (Refused(Approve("x", Role.ADMIN), "rollout_aborted"),)


# --- timeouts and retries ------------------------------------------------------------------


def test_a_terminal_silent_past_its_timeout_is_marked_timed_out() -> None:
    rollout = _started(5).rollout
    assert _started(5).wake_at == T0 + timedelta(seconds=600)
    step_before = step(rollout, [], T0 + timedelta(seconds=599))
    assert step_before.actions == ()
    decision = step(step_before.rollout, [], T0 + timedelta(seconds=600))
    assert MarkedTimedOut("t00", attempt=1) in decision.actions
    assert _state(decision.rollout, "t00") is S.TIMED_OUT


def test_a_failed_terminal_is_retried_after_an_exponential_capped_backoff() -> None:
    rollout = _started(3, max_attempts=4, retry_backoff_s=100.0, retry_backoff_max_s=150.0).rollout
    first = step(rollout, [Report("t00", S.FAILED)], T0)
    assert RetryScheduled("t00", attempt=2, at=T0 + timedelta(seconds=100)) in first.actions
    assert _state(first.rollout, "t00") is S.PENDING
    assert _notified(step(first.rollout, [], T0 + timedelta(seconds=99)).actions) == []
    t1 = T0 + timedelta(seconds=100)
    second = step(first.rollout, [], t1)
    assert second.actions == (Notify("t00", TARGET, 2),)
    third = step(second.rollout, [Report("t00", S.FAILED)], t1)
    assert RetryScheduled("t00", attempt=3, at=t1 + timedelta(seconds=150)) in third.actions


def test_a_late_report_from_an_earlier_attempt_is_refused() -> None:
    rollout = _started(3, max_attempts=2, retry_backoff_s=0.0).rollout
    timed_out = step(rollout, [], T0 + timedelta(seconds=600))
    assert Notify("t00", TARGET, 2) in timed_out.actions
    late = step(timed_out.rollout, [Report("t00", S.SUCCEEDED, attempt=1)], T0)
    assert late.actions == (
        Refused(Report("t00", S.SUCCEEDED, attempt=1), "stale_attempt_1_current_2"),
    )
    current = step(late.rollout, [Report("t00", S.SUCCEEDED, attempt=2)], T0)
    assert _state(current.rollout, "t00") is S.SUCCEEDED


def test_a_rejected_directive_is_not_retried() -> None:
    rollout = _started(3, max_attempts=3).rollout
    decision = step(rollout, [Report("t00", S.REJECTED)], T0)
    assert _state(decision.rollout, "t00") is S.REJECTED
    assert decision.actions == ()
    later = step(decision.rollout, [], T0 + timedelta(seconds=599))
    assert _notified(later.actions) == []


def test_the_last_attempt_failing_is_final() -> None:
    rollout = _started(3, max_attempts=2, retry_backoff_s=0.0).rollout
    retried = step(rollout, [Report("t00", S.FAILED)], T0)
    assert _notified(retried.actions) == ["t00"]
    final = step(retried.rollout, [Report("t00", S.FAILED)], T0)
    assert _state(final.rollout, "t00") is S.FAILED
    assert final.rollout.is_final(
        next(t for t in final.rollout.terminals if t.terminal_id == "t00")
    )


# --- late joiners --------------------------------------------------------------------------


def test_terminals_that_join_later_are_reached_in_the_last_phase() -> None:
    rollout = _succeed(_started(3).rollout, ["t00", "t01"]).rollout
    joined = step(rollout, [Selected(("late1", "late2"))], T0)
    assert _notified(joined.actions) == ["late1", "late2"]
    assert joined.rollout.status is RolloutStatus.RUNNING


def test_a_late_joiner_in_a_count_phase_waits_for_a_later_phase() -> None:
    rollout = _started(2).rollout  # phase 0 is 2 terminals, both notified
    joined = step(rollout, [Selected(("late",))], T0)
    assert _notified(joined.actions) == []
    assert _notified(_succeed(joined.rollout, ["t00", "t01"]).actions) == ["late"]


# --- pause, resume, cancel -----------------------------------------------------------------


def test_a_paused_rollout_sends_nothing_until_resumed() -> None:
    rollout = _started(5).rollout
    paused = step(rollout, [Pause("carol"), Report("t00", S.SUCCEEDED)], T0)
    still = _succeed(paused.rollout, ["t01"])
    assert _notified(still.actions) == []
    assert still.rollout.status is RolloutStatus.PAUSED
    resumed = step(still.rollout, [Resume("carol")], T0)
    assert _notified(resumed.actions) == ["t02", "t03", "t04"]


def test_cancel_cancels_pending_terminals_and_no_notify_follows() -> None:
    rollout = _started(5, max_attempts=3, retry_backoff_s=0.0).rollout
    canceled = step(rollout, [Cancel("carol")], T0)
    assert canceled.actions == (
        Canceled("carol"),
        Withdraw("t00", TARGET),
        Withdraw("t01", TARGET),
    )
    assert [_state(canceled.rollout, i) for i in _ids(5)] == [S.NOTIFIED] * 2 + [S.CANCELED] * 3
    after = step(canceled.rollout, [Report("t00", S.FAILED), Selected(("late",))], T0)
    assert _notified(after.actions) == []
    assert _state(after.rollout, "t00") is S.FAILED  # no retry after a cancel: final
    assert after.rollout.is_final(after.rollout.terminals[0])


def test_events_on_a_canceled_rollout_are_refused() -> None:
    canceled = step(_started(3).rollout, [Cancel("carol")], T0).rollout
    decision = step(canceled, [Resume("carol"), Pause("carol"), Cancel("carol")], T0)
    assert [a.reason for a in decision.actions if isinstance(a, Refused)] == [
        "rollout_canceled"
    ] * 3


# --- bad reports ---------------------------------------------------------------------------


def test_reports_that_break_the_transition_table_are_refused_and_change_nothing() -> None:
    rollout = _started(5).rollout
    bad: list[Event] = [
        Report("t00", S.HEALTH_CHECK),  # notified -> health_check skips installing
        Report("t02", S.SUCCEEDED),  # never notified
        Report("ghost", S.SUCCEEDED),  # not in the rollout
        Report("t01", S.NOTIFIED),  # only the planner notifies
    ]
    decision = step(rollout, bad, T0)
    assert [a.reason for a in decision.actions if isinstance(a, Refused)] == [
        "transition_not_allowed_notified_to_health_check",
        "terminal_not_notified",
        "terminal_not_notified",
        "state_set_by_planner_notified",
    ]
    assert decision.rollout == rollout


def test_the_transition_table_covers_every_state_and_final_states_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(TerminalState)
    for state in (S.SUCCEEDED, S.ALREADY_INSTALLED, S.REJECTED, S.CANCELED):
        assert TRANSITIONS[state] == frozenset()
    assert {s for s, nxt in TRANSITIONS.items() if S.PENDING in nxt} == {
        S.FAILED,
        S.ROLLED_BACK,
        S.TIMED_OUT,
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"phases": ()}, "at least one phase"),
        ({"phases": (Phase(50),)}, "last phase must be 100 percent"),
        ({"phases": (Phase(1, "count", MANUAL), Phase(100))}, "first phase"),
        ({"phases": (Phase(0, "count"), Phase(100))}, "size out of range"),
        ({"phases": (Phase(1, "count"), Phase(100, gate=Delay(-1)))}, "negative gate"),
        ({"success_threshold": 1.5}, "success_threshold"),
        ({"abort": AbortThreshold(0.5, 0)}, "abort threshold"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"retry_backoff_s": -1.0}, "backoff"),
    ],
)
def test_an_invalid_definition_is_refused_with_a_reason(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        new_rollout(_definition(**changes))


# --- invariants ----------------------------------------------------------------------------

_AGENT_STATES = sorted(set(TerminalState) - {S.PENDING, S.NOTIFIED, S.TIMED_OUT})


class RolloutMachine(RuleBasedStateMachine):
    """Random selections, approvals, agent reports, clock moves and operator actions."""

    ended: ClassVar[dict[RolloutStatus, int]] = {}  # runs driven to their end, by final status

    def __init__(self) -> None:
        super().__init__()
        self.rollout: Rollout | None = None
        self.now = T0
        self.joined = 0
        self.wake_at: datetime | None = None

    @rule(
        first=st.integers(1, 5),
        second=st.sampled_from([Phase(20), Phase(50), Phase(3, "count")]),
        gate=st.sampled_from([Delay(0), Delay(300), MANUAL]),
        threshold=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
        abort=st.sampled_from([AbortThreshold(0.2, 2), AbortThreshold(1.0, 1)]),
        attempts=st.integers(1, 3),
    )
    @precondition(lambda self: self.rollout is None)
    def create(
        self,
        first: int,
        second: Phase,
        gate: Delay | str,
        threshold: float,
        abort: AbortThreshold,
        attempts: int,
    ) -> None:
        phases = (Phase(first, "count"), second, Phase(100, gate=gate))  # type: ignore[arg-type]
        self.rollout = new_rollout(
            _definition(
                phases=phases,
                success_threshold=threshold,
                abort=abort,
                max_attempts=attempts,
                retry_backoff_s=30.0,
            )
        )

    def _step(self, events: list[Event]) -> Decision:
        assert self.rollout is not None
        before = self.rollout
        decision = step(before, events, self.now)
        self._check_step(before, decision, single=len(events) <= 1)
        self.rollout = decision.rollout
        self.wake_at = decision.wake_at
        return decision

    def _check_step(self, before: Rollout, decision: Decision, *, single: bool) -> None:
        after = decision.rollout
        if before.status in {RolloutStatus.CANCELED, RolloutStatus.ABORTED}:
            assert _notified(decision.actions) == []
        stops = [a for a in decision.actions if isinstance(a, Canceled | Aborted)]
        if stops:  # nothing is sent after the stop within the same step
            index = decision.actions.index(stops[0])
            assert _notified(decision.actions[index:]) == []
        old = {t.terminal_id: t for t in before.terminals}
        for terminal in after.terminals:
            previous = old.get(terminal.terminal_id)
            if single and previous is not None and previous.state is not terminal.state:
                reachable = TRANSITIONS[previous.state] | {
                    n for mid in TRANSITIONS[previous.state] for n in TRANSITIONS[mid]
                }  # a step may pass one state on its way: failed -> pending -> notified
                assert terminal.state in reachable, (previous, terminal)
        for action in decision.actions:
            if isinstance(action, PhaseAdvanced | Completed):
                phase = action.phase - 1 if isinstance(action, PhaseAdvanced) else after.phase
                mine = [t for t in after.terminals if t.phase == phase]
                assert all(after.is_final(t) for t in mine)
                succeeded = sum(1 for t in mine if t.state in {S.SUCCEEDED, S.ALREADY_INSTALLED})
                assert succeeded >= after.definition.success_threshold * len(mine)

    @rule(count=st.integers(0, 6))
    @precondition(lambda self: self.rollout is not None)
    def select(self, count: int) -> None:
        ids = tuple(f"j{i:03d}" for i in range(self.joined, self.joined + count))
        self.joined += count
        self._step([Selected(ids)])

    @rule(by=st.sampled_from(["alice", "bob"]), role=st.sampled_from(list(Role)))
    @precondition(lambda self: self.rollout is not None)
    def approve(self, by: str, role: Role) -> None:
        self._step([Approve(by, role)])

    @rule(data=st.data())
    @precondition(lambda self: self.rollout is not None and bool(_in_flight(self.rollout)))
    def report(self, data: st.DataObject) -> None:
        assert self.rollout is not None
        terminal = data.draw(st.sampled_from(_in_flight(self.rollout)))
        allowed = sorted(TRANSITIONS[terminal.state] & set(_AGENT_STATES))
        state = data.draw(st.sampled_from(allowed))
        self._step([Report(terminal.terminal_id, state)])

    @rule(seconds=st.sampled_from([1, 30, 300, 601]))
    @precondition(lambda self: self.rollout is not None)
    def wait(self, seconds: int) -> None:
        wake_at = self.wake_at
        self.now += timedelta(seconds=seconds)
        decision = self._step([])
        if wake_at is None or self.now < wake_at:  # the scheduler may sleep until wake_at
            assert decision.actions == ()

    @rule(event=st.sampled_from([Pause("bob"), Resume("bob"), OpenGate("bob")]))
    @precondition(lambda self: self.rollout is not None)
    def operate(self, event: Event) -> None:
        self._step([event])

    @rule(dice=st.integers(0, 4))
    @precondition(lambda self: self.rollout is not None)
    def cancel(self, dice: int) -> None:
        if dice == 0:  # rarer than the other operator actions, so rollouts get somewhere
            self._step([Cancel("bob")])

    @invariant()
    def never_more_admitted_than_the_phase_allows(self) -> None:
        if self.rollout is None:
            return
        admitted = [t for t in self.rollout.terminals if t.phase is not None]
        quota = phase_quota(
            self.rollout.definition, self.rollout.phase, len(self.rollout.terminals)
        )
        assert len(admitted) <= quota
        assert all(t.phase is not None and t.phase <= self.rollout.phase for t in admitted)
        assert len(_in_flight(self.rollout)) <= quota

    def teardown(self) -> None:
        """Drive the rollout to its end; every terminal then sits in one final state."""
        if self.rollout is None:
            return
        self._step([Approve("bob", Role.OPERATOR), Resume("bob")])
        for _ in range(200):
            rollout = self.rollout
            if rollout.status in {
                RolloutStatus.COMPLETED,
                RolloutStatus.ABORTED,
                RolloutStatus.CANCELED,
            } and not _in_flight(rollout):
                break
            events = [e for t in _in_flight(rollout) for e in _to_success(t)]
            if rollout.status is RolloutStatus.PAUSED:
                events.append(Cancel("bob"))
            events.append(OpenGate("bob"))
            self.now += timedelta(seconds=301)
            self._step(events)
        rollout = self.rollout
        assert (
            rollout.status
            in {
                RolloutStatus.COMPLETED,
                RolloutStatus.ABORTED,
                RolloutStatus.CANCELED,
            }
            or not rollout.terminals
        ), rollout.status
        outcomes = (SUCCESSES, FAILURES, frozenset({S.CANCELED}))
        for terminal in rollout.terminals:
            assert rollout.is_final(terminal), terminal
            assert sum(terminal.state in outcome for outcome in outcomes) == 1, terminal
        assert len({t.terminal_id for t in rollout.terminals}) == len(rollout.terminals)
        RolloutMachine.ended[rollout.status] = RolloutMachine.ended.get(rollout.status, 0) + 1


def _in_flight(rollout: Rollout) -> list[TerminalProgress]:
    return [t for t in rollout.terminals if t.state in IN_FLIGHT]


_HAPPY_PATH: tuple[TerminalState, ...] = (
    S.DOWNLOADING,
    S.DOWNLOADED,
    S.INSTALLING,
    S.HEALTH_CHECK,
    S.SUCCEEDED,
)


def _to_success(terminal: TerminalProgress) -> list[Event]:
    """The agent's reports from ``terminal``'s state to succeeded, along the happy path."""
    if terminal.state is S.WAITING_WINDOW:
        rest = _HAPPY_PATH[2:]
    else:
        rest = (
            _HAPPY_PATH[_HAPPY_PATH.index(terminal.state) + 1 :]
            if terminal.state in _HAPPY_PATH
            else _HAPPY_PATH
        )
    return [Report(terminal.terminal_id, state) for state in rest]


def test_rollout_invariants() -> None:
    """The invariants hold over random runs (see ``RolloutMachine``: its invariants and its
    teardown assert them), each driven to its end; the runs reached real ends, not just
    empty rollouts."""
    RolloutMachine.ended.clear()
    run_state_machine_as_test(
        RolloutMachine, settings=settings(max_examples=150, stateful_step_count=40, deadline=None)
    )
    assert RolloutMachine.ended.get(RolloutStatus.COMPLETED, 0) > 0, RolloutMachine.ended
