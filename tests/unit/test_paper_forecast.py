"""The paper forecast: remaining pages, rate by hour of day, ETA and its interval (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.taxonomy import PeripheralCondition
from server.paper_forecast import HORIZON_H, WINDOW_HOURS, PaperForecast, PrinterHistory, forecast

C = PeripheralCondition
T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, 00:00 UTC


def _at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def _refilled(hours_ago_start: float = 0.0) -> PrinterHistory:
    history = PrinterHistory(first_seen=_at(hours_ago_start))
    history.note_condition(_at(hours_ago_start), C.PAPER_OUT)
    history.note_condition(_at(hours_ago_start), C.OK)
    return history


def _steady(history: PrinterHistory, *, per_hour: int, hours: int, start: float = 0.0) -> None:
    for h in range(hours):
        history.note_pages(_at(start + h + 0.5), per_hour)


def _get(history: PrinterHistory, now: float, roll: int = 600) -> PaperForecast:
    got = forecast(history, _at(now), roll_pages=roll, low_share=0.1)
    assert got is not None
    return got


def test_a_flat_rate_under_a_day_gives_the_roll_left_over_the_rate() -> None:
    history = _refilled()
    _steady(history, per_hour=10, hours=10)
    got = _get(history, 10)
    assert got.profile == "flat"
    assert got.basis == "roll"
    assert got.remaining_pages == 500
    assert got.pages_per_hour == pytest.approx(10)
    assert got.eta_s == pytest.approx(50 * 3600)
    assert got.eta_low_s is not None
    assert got.eta_high_s is not None
    assert got.eta_s is not None
    assert got.eta_low_s < got.eta_s < got.eta_high_s


def test_with_a_day_of_history_the_eta_skips_the_hours_nothing_is_printed() -> None:
    history = _refilled()
    for day in range(2):  # 20 pages an hour from 08:00 to 18:00, nothing at night
        _steady(history, per_hour=20, hours=10, start=day * 24 + 8)
    got = _get(history, 48)  # Wednesday 00:00: 600 - 400 = 200 pages left, 10 open hours
    assert got.profile == "hour_of_day"
    assert got.remaining_pages == 200
    assert got.eta_s == pytest.approx((8 + 10) * 3600)  # runs out at 18:00 that day


def test_a_hall_closed_at_weekends_has_its_weekends_skipped_once_one_was_seen() -> None:
    history = _refilled()
    for day in range(5):  # Monday to Friday, 5 pages an hour from 08:00 to 18:00
        _steady(history, per_hour=5, hours=10, start=day * 24 + 8)
    got = _get(history, 7 * 24)  # the next Monday 00:00: 600 - 250 = 350 pages left
    assert got.remaining_pages == 350
    assert got.eta_s == pytest.approx((8 * 24 + 18) * 3600)  # Tuesday week, 18:00


def test_paper_low_uses_the_reserve_and_learns_it_from_the_last_low_to_out() -> None:
    history = _refilled()
    _steady(history, per_hour=10, hours=5)
    history.note_condition(_at(5), C.PAPER_LOW)
    got = _get(history, 5)
    assert (got.basis, got.remaining_pages) == ("reserve", 60)  # 10 % of a 600-page roll
    _steady(history, per_hour=40, hours=1, start=5)
    history.note_condition(_at(6), C.PAPER_OUT)
    assert history.observed_reserve_pages == 40
    assert history.observed_roll_pages == 90
    assert _get(history, 6).eta_s == 0
    history.note_condition(_at(7), C.OK)
    history.note_condition(_at(7), C.PAPER_LOW)
    assert _get(history, 7).remaining_pages == 40  # the reserve seen, not the share
    history.note_condition(_at(7), C.OK)
    assert _get(history, 7).remaining_pages == 90  # the roll seen, not the setting


def test_no_forecast_while_the_level_is_unknown_or_the_history_too_short() -> None:
    history = PrinterHistory(first_seen=T0)
    history.note_condition(T0, C.OK)  # a first sighting says nothing of the level
    _steady(history, per_hour=10, hours=3)
    assert forecast(history, _at(3), roll_pages=600, low_share=0.1) is None
    fresh = _refilled()
    assert forecast(fresh, _at(0.5), roll_pages=600, low_share=0.1) is None


def test_an_idle_printer_has_no_eta_within_the_horizon() -> None:
    history = _refilled()
    history.note_pages(_at(1), 1)
    got = _get(history, 30)
    assert got.eta_s is None
    assert got.runs_out_at is None
    assert HORIZON_H == 14 * 24


def test_the_history_keeps_one_week_of_hours() -> None:
    history = _refilled()
    _steady(history, per_hour=1, hours=WINDOW_HOURS * 3)
    assert len(history.hourly) <= WINDOW_HOURS + 1


def test_bad_settings_and_negative_pages_are_refused() -> None:
    history = _refilled()
    with pytest.raises(ValueError, match="roll_pages"):
        forecast(history, T0, roll_pages=0, low_share=0.1)
    with pytest.raises(ValueError, match="low_share"):
        forecast(history, T0, roll_pages=10, low_share=1.0)
    with pytest.raises(ValueError, match="pages"):
        history.note_pages(T0, -1)


_hourly = st.lists(st.integers(min_value=0, max_value=60), min_size=2, max_size=80)


def _fed(pages: list[int], low_after: int | None = None) -> PrinterHistory:
    history = _refilled()
    for h, n in enumerate(pages):
        if low_after is not None and h == low_after:
            history.note_condition(_at(h), C.PAPER_LOW)
        history.note_pages(_at(h + 0.25), n)
    return history


@given(_hourly, st.integers(min_value=1, max_value=3000), st.one_of(st.none(), st.integers(0, 5)))
def test_the_eta_is_never_negative_and_lies_inside_its_interval(
    pages: list[int], roll: int, low_after: int | None
) -> None:
    history = _fed(pages, low_after)
    got = forecast(history, _at(len(pages)), roll_pages=roll, low_share=0.1)
    assert got is not None
    assert got.remaining_pages >= 0
    if got.eta_s is not None:
        assert got.eta_s >= 0
        assert got.eta_low_s is not None
        assert 0 <= got.eta_low_s <= got.eta_s
        assert got.eta_high_s is None or got.eta_s <= got.eta_high_s
    assert (got.remaining_pages == 0) == (got.eta_s == 0)


@given(_hourly, st.integers(min_value=0, max_value=79), st.integers(min_value=1, max_value=50))
def test_more_pages_printed_never_make_the_eta_later(
    pages: list[int], where: int, more: int
) -> None:
    now = _at(len(pages))
    before = forecast(_fed(pages), now, roll_pages=2000, low_share=0.1)
    bumped = list(pages)
    bumped[where % len(pages)] += more
    after = forecast(_fed(bumped), now, roll_pages=2000, low_share=0.1)
    assert before is not None
    assert after is not None
    assert after.remaining_pages <= before.remaining_pages
    if before.eta_s is not None:
        assert after.eta_s is not None
        assert after.eta_s <= before.eta_s + 1e-6


@given(_hourly, st.integers(min_value=1, max_value=3000), st.integers(min_value=1, max_value=500))
def test_a_longer_roll_never_runs_out_sooner(pages: list[int], roll: int, extra: int) -> None:
    now = _at(len(pages))
    short = forecast(_fed(pages), now, roll_pages=roll, low_share=0.1)
    long = forecast(_fed(pages), now, roll_pages=roll + extra, low_share=0.1)
    assert short is not None
    assert long is not None
    if long.eta_s is not None:
        assert short.eta_s is not None
        assert short.eta_s <= long.eta_s + 1e-6
