"""Opening hours (server.opening_hours): wall-clock hours across DST transitions, intervals
over midnight refused (and joined across days), holidays replacing weekly hours, and the
closed window checked against a minute-by-minute walk."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from server.opening_hours import (
    MAX_INTERVALS_PER_DAY,
    OpeningHours,
    Weekday,
    is_open,
    next_closed_window,
    opening_status,
)

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Tokyo", "UTC"]
BERLIN = ZoneInfo("Europe/Berlin")


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@st.composite
def day_hours(draw: st.DrawFn) -> list[dict[str, str]]:
    """Up to three disjoint, non-touching intervals on 15-minute marks, possibly to 24:00."""
    marks = sorted(draw(st.sets(st.integers(0, 96), max_size=6)))
    if len(marks) % 2:
        marks = marks[:-1]
    return [
        {"start": _clock(a * 15), "end": _clock(b * 15)}
        for a, b in zip(marks[::2], marks[1::2], strict=True)
        if b > a
    ][:3]


def _touching_free(intervals: list[dict[str, str]]) -> list[dict[str, str]]:
    kept: list[dict[str, str]] = []
    for iv in intervals:
        if kept and kept[-1]["end"] == iv["start"]:
            continue
        kept.append(iv)
    return kept


@st.composite
def opening_hours(draw: st.DrawFn) -> OpeningHours:
    weekly = {
        day.value: _touching_free(draw(day_hours())) for day in Weekday if draw(st.booleans())
    }
    dates = draw(st.sets(st.dates(date(2026, 1, 1), date(2027, 12, 31)), max_size=5))
    holidays: list[dict[str, Any]] = [
        {"date": d.isoformat(), "hours": _touching_free(draw(day_hours()))} for d in dates
    ]
    return OpeningHours.model_validate(
        {"timezone": draw(st.sampled_from(ZONES)), "weekly": weekly, "holidays": holidays}
    )


instants = st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 1), timezones=st.just(UTC)).map(
    lambda t: t.replace(second=0, microsecond=0)
)


def _hours(weekly: dict[str, list[tuple[str, str]]], **extra: Any) -> OpeningHours:
    body = {d: [{"start": a, "end": b} for a, b in ivs] for d, ivs in weekly.items()}
    return OpeningHours.model_validate({"timezone": "Europe/Berlin", "weekly": body, **extra})


EVERY_DAY = {d.value: [("08:00", "20:00")] for d in Weekday}


@settings(max_examples=60, deadline=None)
@given(hours=opening_hours(), now=instants)
def test_the_closed_window_matches_a_minute_by_minute_walk(
    hours: OpeningHours, now: datetime
) -> None:
    walk = [now + timedelta(minutes=n) for n in range(4 * 24 * 60)]
    states = [is_open(hours, t) for t in walk]
    window = next_closed_window(hours, now)
    closing = next((t for t, s in zip(walk, states, strict=True) if not s), None)
    if closing is None:  # open for four days straight: the window starts later, if at all
        assert window is None or window[0] > walk[-1]
        return
    assert window is not None
    start, end = window
    assert start == closing
    reopening = next((t for t, s in zip(walk, states, strict=True) if t > start and s), None)
    if reopening is not None:
        assert end == reopening
    else:
        assert end is None or end > walk[-1]


@settings(max_examples=60, deadline=None)
@given(hours=opening_hours(), now=instants)
def test_a_holiday_replaces_the_weekly_hours_of_its_date(
    hours: OpeningHours, now: datetime
) -> None:
    local = now.astimezone(hours.zone)
    holiday = next((h for h in hours.holidays if h.date == local.date()), None)
    minute = local.hour * 60 + local.minute
    if holiday is not None:
        expected = any(iv.minutes[0] <= minute < iv.minutes[1] for iv in holiday.hours)
    else:
        weekly = hours.weekly.get(list(Weekday)[local.weekday()], [])
        expected = any(iv.minutes[0] <= minute < iv.minutes[1] for iv in weekly)
    assert is_open(hours, now) is expected


def test_a_closed_holiday_closes_a_day_the_weekly_hours_open() -> None:
    hours = _hours(EVERY_DAY, holidays=[{"date": "2026-12-25"}])
    noon = datetime(2026, 12, 25, 12, tzinfo=BERLIN)
    assert is_open(hours, noon - timedelta(days=1))
    assert not is_open(hours, noon)
    window = next_closed_window(hours, datetime(2026, 12, 24, 12, tzinfo=BERLIN))
    assert window == (
        datetime(2026, 12, 24, 20, tzinfo=BERLIN),
        datetime(2026, 12, 26, 8, tzinfo=BERLIN),
    )


def test_special_hours_on_a_holiday_open_a_day_the_weekly_hours_close() -> None:
    hours = _hours(
        {"mon": [("08:00", "20:00")]},
        holidays=[{"date": "2026-12-27", "hours": [{"start": "10:00", "end": "14:00"}]}],
    )  # 2026-12-27 is a Sunday
    assert is_open(hours, datetime(2026, 12, 27, 11, tzinfo=BERLIN))
    assert not is_open(hours, datetime(2026, 12, 27, 15, tzinfo=BERLIN))
    assert not is_open(hours, datetime(2027, 1, 3, 11, tzinfo=BERLIN))  # a plain Sunday


def test_hours_are_wall_clock_times_in_summer_and_in_winter() -> None:
    hours = _hours(EVERY_DAY)
    assert is_open(hours, datetime(2026, 7, 1, 6, 30, tzinfo=UTC))  # 08:30 CEST
    assert not is_open(hours, datetime(2026, 1, 7, 6, 30, tzinfo=UTC))  # 07:30 CET
    assert is_open(hours, datetime(2026, 1, 7, 7, 30, tzinfo=UTC))  # 08:30 CET


def test_a_closing_time_clocks_skip_takes_effect_at_the_jump() -> None:
    # 2026-03-29 in Berlin: 02:00 CET becomes 03:00 CEST; 02:30 does not occur.
    hours = _hours({"sun": [("00:00", "02:30"), ("09:00", "17:00")]})
    window = next_closed_window(hours, datetime(2026, 3, 29, 0, 30, tzinfo=UTC))  # 01:30 CET
    assert window == (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), datetime(2026, 3, 29, 7, tzinfo=UTC))


def test_in_the_repeated_hour_both_occurrences_of_a_wall_time_count_alike() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET; 02:00-03:00 occurs twice.
    hours = _hours({"sun": [("00:00", "02:30"), ("09:00", "17:00")]})
    first_0215 = datetime(2026, 10, 25, 0, 15, tzinfo=UTC)
    second_0215 = datetime(2026, 10, 25, 1, 15, tzinfo=UTC)
    assert first_0215.astimezone(BERLIN).hour == second_0215.astimezone(BERLIN).hour == 2
    assert is_open(hours, first_0215)
    assert is_open(hours, second_0215)
    assert next_closed_window(hours, first_0215) == (
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # first 02:30 CEST
        datetime(2026, 10, 25, 1, 0, tzinfo=UTC),  # 02:00 CET: the wall time is open again
    )
    assert next_closed_window(hours, second_0215) == (
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 8, 0, tzinfo=UTC),  # 09:00 CET
    )


@given(start=st.integers(0, 24 * 60 - 1), end=st.integers(0, 24 * 60))
def test_an_interval_is_refused_unless_it_ends_after_it_starts_on_the_same_day(
    start: int, end: int
) -> None:
    body = {"timezone": "UTC", "weekly": {"mon": [{"start": _clock(start), "end": _clock(end)}]}}
    if end > start:
        assert OpeningHours.model_validate(body).weekly[Weekday.MON][0].minutes == (start, end)
    else:
        with pytest.raises(ValidationError, match="never crosses midnight"):
            OpeningHours.model_validate(body)


def test_a_late_shift_split_at_midnight_is_one_opening() -> None:
    hours = _hours({"fri": [("18:00", "24:00")], "sat": [("00:00", "02:00")]})
    window = next_closed_window(hours, datetime(2026, 12, 4, 23, tzinfo=BERLIN))
    assert window == (
        datetime(2026, 12, 5, 2, tzinfo=BERLIN),
        datetime(2026, 12, 11, 18, tzinfo=BERLIN),
    )


def test_open_around_the_clock_has_no_window_and_never_open_has_no_end() -> None:
    always = _hours({d.value: [("00:00", "24:00")] for d in Weekday})
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    assert next_closed_window(always, now) is None
    assert next_closed_window(_hours({}), now) == (now, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "not a known IANA time zone"),
        ({"timezone": "../etc/passwd"}, "not a known IANA time zone"),
        (
            {
                "timezone": "UTC",
                "weekly": {
                    "mon": [{"start": "08:00", "end": "12:00"}, {"start": "11:00", "end": "13:00"}]
                },
            },
            "overlap or touch",
        ),
        ({"timezone": "UTC", "weekly": {"mon": [{"start": "8:00", "end": "12:00"}]}}, "pattern"),
        ({"timezone": "UTC", "weekly": {"mon": [{"start": "24:00", "end": "24:00"}]}}, "24:00"),
        ({"timezone": "UTC", "weekly": {"someday": []}}, "someday"),
        (
            {"timezone": "UTC", "holidays": [{"date": "2026-12-25"}, {"date": "2026-12-25"}]},
            "listed twice",
        ),
        (
            {
                "timezone": "UTC",
                "weekly": {
                    "mon": [
                        {"start": _clock(2 * n), "end": _clock(2 * n + 1)}
                        for n in range(MAX_INTERVALS_PER_DAY + 1)
                    ]
                },
            },
            "at most",
        ),
        ({"timezone": "UTC", "extra": 1}, "extra"),
    ],
)
def test_bad_hours_are_refused_with_a_clear_reason(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OpeningHours.model_validate(body)


def test_a_naive_now_is_refused() -> None:
    hours = _hours(EVERY_DAY)
    with pytest.raises(ValueError, match="no time zone"):
        is_open(hours, datetime(2026, 12, 3, 12))
    with pytest.raises(ValueError, match="no time zone"):
        next_closed_window(hours, datetime(2026, 12, 3, 12))


@settings(max_examples=60, deadline=None)
@given(hours=opening_hours(), now=instants)
def test_the_opening_status_holds_minute_by_minute_until_it_says_it_changes(
    hours: OpeningHours, now: datetime
) -> None:
    status = opening_status(hours, now)
    assert status.open is is_open(hours, now)
    assert status.valid_from == now < status.valid_until
    walk = [now + timedelta(minutes=n) for n in range(2 * 24 * 60)]
    for t in walk:
        if t >= status.valid_until:
            break
        assert is_open(hours, t) is status.open, t
    if status.opens_at is not None:
        assert not status.open
        assert not is_open(hours, status.opens_at - timedelta(minutes=1))
        assert is_open(hours, status.opens_at)
        assert status.opens_in_s(now) == (status.opens_at - now).total_seconds()
    if status.open:
        assert status.opens_in_s(now) == 0


def test_the_minutes_before_opening_count_down_to_the_opening() -> None:
    hours = _hours(EVERY_DAY, holidays=[{"date": "2026-12-25"}])
    before = opening_status(hours, datetime(2026, 12, 4, 7, 40, tzinfo=BERLIN))
    assert (before.open, before.opens_in_s(datetime(2026, 12, 4, 7, 40, tzinfo=BERLIN))) == (
        False,
        20 * 60,
    )
    assert before.valid_until == datetime(2026, 12, 4, 8, tzinfo=BERLIN)
    day = opening_status(hours, datetime(2026, 12, 4, 12, tzinfo=BERLIN))
    assert (day.open, day.valid_until) == (True, datetime(2026, 12, 4, 20, tzinfo=BERLIN))
    holiday = opening_status(hours, datetime(2026, 12, 25, 12, tzinfo=BERLIN))
    assert (holiday.open, holiday.opens_at) == (False, datetime(2026, 12, 26, 8, tzinfo=BERLIN))
