"""The rollout gauges: counts by phase and state, status, phase, progress clock, and the bound
(also as a Hypothesis property of ``exported``).

Rollouts are driven through the real planner (``step``, pure) with a clock that only moves
when the test says so; the board is read through a fresh ``CollectorRegistry``, the way a
scrape reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from server.access import Role
from server.rollout_metrics import (
    NO_PHASE,
    ROLLOUT_METRIC_NAMES,
    RolloutBoard,
    RolloutMetricsBound,
    RolloutReading,
    exported,
    progressed,
)
from server.rollout_planner import (
    AbortThreshold,
    Approve,
    Cancel,
    Decision,
    Event,
    Phase,
    Report,
    Rollout,
    RolloutDefinition,
    RolloutStatus,
    Selected,
    TerminalState,
    new_rollout,
    step,
)

T0 = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)
S = TerminalState


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _rollout(rollout_id: str = "R-1") -> Rollout:
    return new_rollout(
        RolloutDefinition(
            rollout_id=rollout_id,
            target="acme/kiosk-app-2.bin",
            created_by="alice",
            phases=(Phase(2, "count"), Phase(100, "percent")),
            success_threshold=1.0,
            abort=AbortThreshold(failure_ratio=0.5, min_decided=2),
            terminal_timeout_s=3600,
            max_attempts=1,
        )
    )


def _step(board: RolloutBoard, rollout: Rollout, events: list[Event], now: datetime) -> Rollout:
    decision: Decision = step(rollout, events, now)
    board.note(decision.rollout, now=now, progressed=progressed(events, decision.actions))
    return decision.rollout


def _started(board: RolloutBoard, rollout_id: str, now: datetime) -> Rollout:
    rollout = _rollout(rollout_id)
    board.note(rollout, now=now, progressed=True)
    selected = Selected(("T-1", "T-2", "T-3", "T-4"))
    return _step(board, rollout, [selected, Approve("bob", Role.OPERATOR)], now)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(v for _, v in sorted(s.labels.items())): s.value
        for family in registry.collect()
        if family.name == name
        for s in family.samples
    }


def _board(
    clock: Clock, bound: RolloutMetricsBound | None = None
) -> tuple[RolloutBoard, CollectorRegistry]:
    board = RolloutBoard(bound, clock=clock)
    registry = CollectorRegistry()
    registry.register(board)
    return board, registry


def test_a_running_rollout_shows_its_terminals_by_phase_and_state_and_its_status() -> None:
    clock = Clock()
    board, registry = _board(clock)
    rollout = _started(board, "R-1", T0)
    rollout = _step(board, rollout, [Report("T-1", S.DOWNLOADING)], T0 + timedelta(minutes=1))

    # labels sorted by name: (phase, rollout, state)
    assert _samples(registry, "kioskfleet_rollout_terminals") == {
        ("0", "R-1", "downloading"): 1,
        ("0", "R-1", "notified"): 1,
        (NO_PHASE, "R-1", "pending"): 2,
    }
    status = _samples(registry, "kioskfleet_rollout_status")
    assert {k[1]: v for k, v in status.items()} == {
        "awaiting_approval": 0,
        "running": 1,
        "paused": 0,
        "aborted": 0,
        "canceled": 0,
        "completed": 0,
    }
    assert _samples(registry, "kioskfleet_rollout_phase") == {("R-1",): 0}
    progress = _samples(registry, "kioskfleet_rollout_last_progress_timestamp_seconds")
    assert progress == {("R-1",): (T0 + timedelta(minutes=1)).timestamp()}


def test_the_progress_clock_moves_on_reports_and_phase_advances_not_on_planner_moves() -> None:
    clock = Clock()
    board, registry = _board(clock)
    rollout = _started(board, "R-1", T0)
    at = T0 + timedelta(minutes=5)
    rollout = _step(board, rollout, [Selected(("T-1", "T-2", "T-3", "T-4"))], at)  # a tick
    progress = "kioskfleet_rollout_last_progress_timestamp_seconds"
    assert _samples(registry, progress) == {("R-1",): T0.timestamp()}

    refused = Report("T-3", S.SUCCEEDED)  # not notified: the planner refuses it
    rollout = _step(board, rollout, [refused], at)
    assert _samples(registry, progress) == {("R-1",): T0.timestamp()}

    done = T0 + timedelta(minutes=9)
    rollout = _step(board, rollout, [Report("T-1", S.SUCCEEDED), Report("T-2", S.SUCCEEDED)], done)
    assert rollout.phase == 1
    assert _samples(registry, progress) == {("R-1",): done.timestamp()}
    assert _samples(registry, "kioskfleet_rollout_phase") == {("R-1",): 1}


def test_an_aborted_rollout_shows_status_aborted_until_the_window_passes() -> None:
    clock = Clock()
    board, registry = _board(clock, RolloutMetricsBound(finished_window_s=3600))
    rollout = _started(board, "R-ABORT", T0)
    failed: list[Event] = [Report("T-1", S.FAILED), Report("T-2", S.FAILED)]
    rollout = _step(board, rollout, failed, T0)
    assert rollout.status is RolloutStatus.ABORTED
    status = _samples(registry, "kioskfleet_rollout_status")
    assert status[("R-ABORT", "aborted")] == 1
    assert status[("R-ABORT", "running")] == 0

    clock.now = T0 + timedelta(minutes=59)
    assert _samples(registry, "kioskfleet_rollout_status")[("R-ABORT", "aborted")] == 1
    clock.now = T0 + timedelta(minutes=61)
    for name in ROLLOUT_METRIC_NAMES:
        assert _samples(registry, name) == {}, name


def test_many_finished_rollouts_leave_a_bounded_number_of_series() -> None:
    clock = Clock()
    board, registry = _board(clock, RolloutMetricsBound(finished_window_s=3600, finished_max=20))
    active = _started(board, "R-ACTIVE", T0)
    for i in range(200):
        at = T0 + timedelta(seconds=i)
        # canceled before approval: every terminal canceled, settled at once
        events: list[Event] = [Selected(("T-1", "T-2")), Cancel("carol")]
        rollout = _step(board, _rollout(f"R-{i:03}"), events, at)
        assert rollout.status is RolloutStatus.CANCELED
    clock.now = T0 + timedelta(seconds=200)

    shown = {labels[0] for labels in _samples(registry, "kioskfleet_rollout_phase")}
    assert shown == {"R-ACTIVE"} | {f"R-{i:03}" for i in range(180, 200)}
    assert len(_samples(registry, "kioskfleet_rollout_status")) == 21 * len(RolloutStatus)
    assert len(board.readings()) == 21

    clock.now = T0 + timedelta(hours=2)  # every canceled one is past the window
    assert {k[0] for k in _samples(registry, "kioskfleet_rollout_phase")} == {"R-ACTIVE"}
    assert active.status is RolloutStatus.RUNNING


def test_a_stopped_rollout_with_terminals_still_reporting_keeps_its_series() -> None:
    clock = Clock()
    board, registry = _board(clock, RolloutMetricsBound(finished_window_s=60, finished_max=1))
    rollout = _step(board, _started(board, "R-C", T0), [Cancel("carol")], T0)
    assert rollout.status is RolloutStatus.CANCELED
    _step(board, _started(board, "R-D", T0), [Cancel("carol")], T0)
    clock.now = T0 + timedelta(hours=1)
    # both have notified terminals that have not reported: unsettled, kept past the window
    assert {k[0] for k in _samples(registry, "kioskfleet_rollout_phase")} == {"R-C", "R-D"}
    _step(board, rollout, [Report("T-1", S.SUCCEEDED), Report("T-2", S.CANCELED)], clock.now)
    assert {k[0] for k in _samples(registry, "kioskfleet_rollout_phase")} == {"R-C", "R-D"}
    clock.now += timedelta(minutes=2)
    assert {k[0] for k in _samples(registry, "kioskfleet_rollout_phase")} == {"R-D"}


def test_load_seeds_rollouts_a_previous_process_left_without_overwriting_newer_ones() -> None:
    clock = Clock()
    board, registry = _board(clock)
    running = _started(board, "R-NEW", T0)
    later = T0 + timedelta(minutes=30)
    board.load([(_rollout("R-OLD"), T0), (running, T0)], now=later)
    progress = _samples(registry, "kioskfleet_rollout_last_progress_timestamp_seconds")
    assert progress == {("R-NEW",): T0.timestamp(), ("R-OLD",): later.timestamp()}
    status = _samples(registry, "kioskfleet_rollout_status")
    assert status[("R-OLD", "awaiting_approval")] == 1


@given(
    settled_minutes_ago=st.lists(
        st.one_of(st.none(), st.integers(min_value=0, max_value=600)), max_size=80
    ),
    finished_max=st.integers(min_value=0, max_value=30),
)
def test_exported_keeps_every_unsettled_rollout_and_at_most_the_newest_settled_in_the_window(
    settled_minutes_ago: list[int | None], finished_max: int
) -> None:
    bound = RolloutMetricsBound(finished_window_s=3600, finished_max=finished_max)
    readings = [
        RolloutReading(
            rollout_id=f"R-{i}",
            status=RolloutStatus.RUNNING if ago is None else RolloutStatus.COMPLETED,
            phase=0,
            terminals={},
            last_progress=T0,
            settled_at=None if ago is None else T0 - timedelta(minutes=ago),
        )
        for i, ago in enumerate(settled_minutes_ago)
    ]
    shown = exported(readings, T0, bound)
    unsettled = {r.rollout_id for r in readings if r.settled_at is None}
    settled = [r for r in shown if r.settled_at is not None]
    assert unsettled <= {r.rollout_id for r in shown}
    assert len(settled) <= finished_max
    assert all(T0 - r.settled_at <= timedelta(hours=1) for r in settled if r.settled_at)
    in_window = [
        r for r in readings if r.settled_at is not None and T0 - r.settled_at <= timedelta(hours=1)
    ]
    assert len(settled) == min(finished_max, len(in_window))
    newest_left_out = max(
        (r.settled_at for r in in_window if r not in settled and r.settled_at), default=None
    )
    if newest_left_out is not None:
        assert all(r.settled_at and r.settled_at >= newest_left_out for r in settled)
