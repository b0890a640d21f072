"""The pure decisions of operator actions (server.maintenance) and the CLI's duration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kioskfleet.maintenance_cli import parse_duration
from protocol.messages import PeripheralCondition, PeripheralKind
from server.fleet_views import PeripheralView
from server.maintenance import (
    MaintenanceLimits,
    MaintenanceRefusal,
    MaintenanceWindow,
    ProblemAck,
    Scope,
    ack_applies,
    active_maintenance,
    check_ack,
    check_window,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
LIMITS = MaintenanceLimits(max_windows=2, max_acks_per_terminal=1)
OUT = PeripheralView("printer", PeripheralKind.RECEIPT_PRINTER, PeripheralCondition.PAPER_OUT, NOW)


def _window(scope: Scope, target: str, until: datetime) -> MaintenanceWindow:
    return MaintenanceWindow(scope, target, "r", until, NOW - timedelta(hours=1), "token:t")


def test_a_window_is_active_from_its_start_until_just_before_its_end() -> None:
    w = _window(Scope.TERMINAL, "KF-1", NOW + timedelta(hours=1))
    assert w.active(NOW)
    assert w.active(NOW + timedelta(minutes=59))
    assert not w.active(NOW + timedelta(hours=1))
    assert not w.active(NOW - timedelta(hours=2))


def test_active_maintenance_covers_a_terminal_by_its_own_window_or_its_halls() -> None:
    windows = [
        _window(Scope.TERMINAL, "KF-1", NOW + timedelta(hours=1)),
        _window(Scope.HALL, "Hall A", NOW + timedelta(hours=1)),
        _window(Scope.TERMINAL, "KF-OLD", NOW),  # ended
    ]
    active = active_maintenance(windows, NOW)
    assert active.covers("KF-1", "Hall B")
    assert active.covers("KF-2", "Hall A")
    assert not active.covers("KF-2", None)
    assert not active.covers("KF-OLD", "Hall B")


@pytest.mark.parametrize(
    ("until", "active", "replaces", "refusal"),
    [
        (NOW + timedelta(days=30), 0, False, None),
        (NOW + timedelta(days=30, seconds=1), 0, False, MaintenanceRefusal.UNTIL_TOO_FAR),
        (NOW, 0, False, MaintenanceRefusal.UNTIL_PAST),
        (NOW.replace(tzinfo=None) + timedelta(hours=1), 0, False, MaintenanceRefusal.NAIVE_TIME),
        (NOW + timedelta(hours=1), 2, False, MaintenanceRefusal.TOO_MANY_WINDOWS),
        (NOW + timedelta(hours=1), 2, True, None),
    ],
)
def test_check_window_bounds_the_end_and_the_number_of_windows(
    until: datetime, active: int, replaces: bool, refusal: MaintenanceRefusal | None
) -> None:
    assert check_window(until, NOW, active_windows=active, replaces=replaces, limits=LIMITS) == (
        refusal
    )


def test_only_a_current_problem_of_an_online_terminal_can_be_acked_within_the_limit() -> None:
    ok = PeripheralView("printer", PeripheralKind.RECEIPT_PRINTER, PeripheralCondition.OK, NOW)
    refuse = MaintenanceRefusal.NO_PROBLEM
    assert check_ack(OUT, True, current_acks=0, replaces=False, limits=LIMITS) is None
    assert check_ack(ok, True, current_acks=0, replaces=False, limits=LIMITS) is refuse
    assert check_ack(None, True, current_acks=0, replaces=False, limits=LIMITS) is refuse
    assert check_ack(OUT, False, current_acks=0, replaces=False, limits=LIMITS) is refuse
    too_many = check_ack(OUT, True, current_acks=1, replaces=False, limits=LIMITS)
    assert too_many is MaintenanceRefusal.TOO_MANY_ACKS
    assert check_ack(OUT, True, current_acks=1, replaces=True, limits=LIMITS) is None


def test_an_ack_applies_to_the_problem_it_named_and_not_to_a_later_one() -> None:
    ack = ProblemAck(
        "KF-1", "printer", NOW, PeripheralCondition.PAPER_OUT, "n", None, NOW, "token:t"
    )
    later = PeripheralView(
        "printer", PeripheralKind.RECEIPT_PRINTER, PeripheralCondition.PAPER_OUT, NOW + timedelta(1)
    )
    ok = PeripheralView("printer", PeripheralKind.RECEIPT_PRINTER, PeripheralCondition.OK, NOW)
    assert ack_applies(ack, OUT, online=True)
    assert not ack_applies(ack, later, online=True)
    assert not ack_applies(ack, ok, online=True)
    assert not ack_applies(ack, OUT, online=False)
    assert not ack_applies(ack, None, online=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90m", timedelta(minutes=90)), ("2h", timedelta(hours=2)), ("3d", timedelta(days=3))],
)
def test_the_cli_reads_durations_in_minutes_hours_days(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "2x", "0h", "-1h", "1.5h"])
def test_the_cli_refuses_other_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
