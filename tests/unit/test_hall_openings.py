"""The hall openings the metrics read (server.hall_openings): the hours are read from the
store once per refresh (or after a change), never per scrape; halls without hours are
always open; a failed reload keeps the hours already held."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from server.errors import StorageError
from server.hall_openings import HallOpenings
from server.opening_hours import OpeningHours

BERLIN = ZoneInfo("Europe/Berlin")
DAY_HOURS = OpeningHours.model_validate(
    {
        "timezone": "Europe/Berlin",
        "weekly": {d: [{"start": "08:00", "end": "18:00"}] for d in ("mon", "tue", "fri")},
        "holidays": [{"date": "2026-12-25"}],
    }
)


class _Store:
    """A fake hours store: what ``OpeningHoursStore.all`` returns, and how often it is read."""

    def __init__(self, hours: Mapping[str, OpeningHours], invalid: list[str] | None = None):
        self.hours = dict(hours)
        self.invalid = invalid or []
        self.loads = 0
        self.fail = False

    def all(self) -> tuple[Mapping[str, OpeningHours], list[str]]:
        self.loads += 1
        if self.fail:
            raise StorageError("read all opening hours", "database down")
        return dict(self.hours), list(self.invalid)


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _openings(store: _Store, clock: _Clock) -> HallOpenings:
    return HallOpenings(store.all, refresh_s=60, clock=clock)


def test_day_night_holiday_and_the_minutes_before_opening() -> None:
    clock = _Clock(datetime(2026, 12, 4, 12, tzinfo=BERLIN))  # a Friday
    openings = _openings(_Store({"H1": DAY_HOURS}), clock)
    assert openings("H1") == (True, 0.0)
    clock.now = datetime(2026, 12, 4, 22, tzinfo=BERLIN)
    assert openings("H1") == (False, timedelta(days=2, hours=10).total_seconds())  # Monday
    clock.now = datetime(2026, 12, 25, 12, tzinfo=BERLIN)  # a holiday Friday
    assert openings("H1")[0] is False
    clock.now = datetime(2026, 12, 7, 7, 45, tzinfo=BERLIN)
    assert openings("H1") == (False, 15 * 60)


def test_a_hall_without_hours_and_no_hall_are_always_open() -> None:
    openings = _openings(_Store({"H1": DAY_HOURS}), _Clock(datetime(2026, 12, 4, 23, tzinfo=UTC)))
    assert openings("H1")[0] is False
    assert openings("H2") == (True, 0.0)
    assert openings(None) == (True, 0.0)


def test_a_hall_whose_stored_hours_are_invalid_is_always_open() -> None:
    store = _Store({}, invalid=["H1"])
    openings = _openings(store, _Clock(datetime(2026, 12, 4, 23, tzinfo=UTC)))
    assert openings("H1") == (True, 0.0)


def test_the_hours_are_read_once_per_refresh_not_per_call() -> None:
    store = _Store({"H1": DAY_HOURS})
    clock = _Clock(datetime(2026, 12, 4, 12, tzinfo=UTC))
    openings = _openings(store, clock)
    for second in range(60):
        clock.now = datetime(2026, 12, 4, 12, 0, second, tzinfo=UTC)
        openings("H1")
        openings("H2")
    assert store.loads == 1
    clock.now += timedelta(seconds=61)
    openings("H1")
    assert store.loads == 2


def test_a_change_is_seen_at_the_next_call_after_invalidate() -> None:
    store = _Store({})
    clock = _Clock(datetime(2026, 12, 4, 23, tzinfo=UTC))
    openings = _openings(store, clock)
    assert openings("H1") == (True, 0.0)
    store.hours["H1"] = DAY_HOURS
    assert openings("H1") == (True, 0.0)  # cached until the refresh
    openings.invalidate()
    assert openings("H1")[0] is False
    assert store.loads == 2


def test_a_failed_reload_keeps_the_hours_already_held() -> None:
    store = _Store({"H1": DAY_HOURS})
    clock = _Clock(datetime(2026, 12, 4, 23, tzinfo=UTC))
    openings = _openings(store, clock)
    assert openings("H1")[0] is False
    store.fail = True
    openings.invalidate()
    assert openings("H1")[0] is False
    assert store.loads == 2


def test_a_refresh_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refresh_s"):
        HallOpenings(_Store({}).all, refresh_s=0, clock=_Clock(datetime.now(UTC)))
