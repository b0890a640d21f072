"""Hours of the week in each hall's own zone (server.analytics.hour_of_week, the figures
and the turned-away estimate that use it, the report's ISO week): UTC rollup hours are
placed in the local hour they start in, Asia/Shanghai's 09:00 is cell 9 and not 1,
Europe/Berlin's DST days have 23 and 25 hours, Asia/Kolkata's half hour falls back to the
local hour the UTC hour starts in, a hall without hours stays in UTC."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from server.analytics import GroupBy, HourlyUsage, figures, hour_of_week, turned_away
from server.analytics_report import AnalyticsSources, Range
from server.console.i18n import load_catalogs
from server.hall_report import hall_week, parse_week, render_html
from server.opening_hours import OpeningHours

SHANGHAI = ZoneInfo("Asia/Shanghai")  # +08:00, no DST
BERLIN = ZoneInfo("Europe/Berlin")  # +01:00, +02:00 from the last Sunday of March
KOLKATA = ZoneInfo("Asia/Kolkata")  # +05:30
MONDAY = datetime(2026, 11, 23, tzinfo=UTC)
SERVICE = "tax.invoice.print"


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _row(hall: str, hour: datetime, n: int = 1) -> HourlyUsage:
    return HourlyUsage(hall, f"T-{hall}", SERVICE, hour, {"completed": n}, 60.0 * n, 0)


def test_utc_hours_of_the_week_start_on_monday_midnight_utc() -> None:
    assert hour_of_week(MONDAY) == hour_of_week(MONDAY, UTC) == 0
    assert hour_of_week(MONDAY + timedelta(hours=9, minutes=59)) == 9
    assert hour_of_week(MONDAY - timedelta(minutes=1)) == 167  # Sunday 23:59


def test_shanghai_monday_nine_local_is_hour_nine_not_the_utc_hour_one() -> None:
    nine_local = datetime(2026, 11, 23, 9, 0, tzinfo=SHANGHAI)
    assert nine_local.astimezone(UTC) == _utc(2026, 11, 23, 1)
    assert hour_of_week(nine_local, SHANGHAI) == 9
    assert hour_of_week(nine_local, UTC) == 1
    # Monday 00:00 local is Sunday 16:00 UTC: the local week starts there
    assert hour_of_week(_utc(2026, 11, 22, 16), SHANGHAI) == 0
    assert hour_of_week(_utc(2026, 11, 22, 15), SHANGHAI) == 167


def test_berlin_spring_day_has_23_local_hours_and_autumn_day_25() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; 2026-10-25: 03:00 CEST goes back to 02:00
    spring = [hour_of_week(_utc(2026, 3, 28, 23) + timedelta(hours=h), BERLIN) for h in range(23)]
    assert len(spring) == len(set(spring)) == 23  # the UTC hours of the local Sunday
    assert spring[:3] == [6 * 24 + 0, 6 * 24 + 1, 6 * 24 + 3]  # local 02:00 never happens
    assert spring[-1] == 6 * 24 + 23
    autumn = [hour_of_week(_utc(2026, 10, 24, 22) + timedelta(hours=h), BERLIN) for h in range(25)]
    counts = Counter(autumn)
    assert len(autumn) == 25
    assert counts[6 * 24 + 2] == 2  # local 02:00 happens twice
    assert all(n == 1 for how, n in counts.items() if how != 6 * 24 + 2)
    assert sorted(counts) == [6 * 24 + h for h in range(24)]
    # a summer weekday's 09:00 local is 07:00 UTC, a winter one's 08:00 UTC: both cell 9
    assert (
        hour_of_week(_utc(2026, 7, 6, 7), BERLIN) == hour_of_week(_utc(2026, 1, 5, 8), BERLIN) == 9
    )


def test_kolkata_half_hour_puts_a_utc_hour_in_the_local_hour_it_starts_in() -> None:
    # UTC 03:00-04:00 is 08:30-09:30 local: it counts at 08, the hour it starts in
    assert hour_of_week(_utc(2026, 11, 23, 3), KOLKATA) == 8
    assert hour_of_week(_utc(2026, 11, 23, 3, 59), KOLKATA) == 8  # the row's hour decides
    assert hour_of_week(_utc(2026, 11, 22, 18), KOLKATA) == 167  # 23:30 Sunday
    assert hour_of_week(_utc(2026, 11, 22, 19), KOLKATA) == 0  # 00:30 Monday
    week = [hour_of_week(_utc(2026, 11, 22, 19) + timedelta(hours=h), KOLKATA) for h in range(168)]
    assert week == list(range(168))  # still one to one over a week


def test_several_halls_add_up_local_hour_by_local_hour_and_a_hall_without_hours_is_utc() -> None:
    rows = [
        _row("sh", datetime(2026, 11, 23, 9, tzinfo=SHANGHAI).astimezone(UTC), 5),
        _row("be", datetime(2026, 11, 23, 9, tzinfo=BERLIN).astimezone(UTC), 3),
        _row("utc", _utc(2026, 11, 23, 9), 2),
        _row("nohours", _utc(2026, 11, 23, 9), 1),
    ]
    zones = {"sh": SHANGHAI, "be": BERLIN, "utc": UTC}
    by_hour = {f.key: f.transactions for f in figures(rows, GroupBy.HOUR_OF_WEEK, zones)}
    assert by_hour == {9: 11}
    utc_only = {f.key: f.transactions for f in figures(rows, GroupBy.HOUR_OF_WEEK)}
    assert utc_only == {1: 5, 8: 3, 9: 3}


def test_turned_away_uses_the_demand_of_the_same_local_hour_across_a_dst_change() -> None:
    # Berlin, Monday 09:00 local: 08:00 UTC in winter (available, 6 served), then 07:00 UTC
    # after the spring change (half an hour down). The rate is the winter 09:00's.
    winter, summer = _utc(2026, 3, 23, 8), _utc(2026, 3, 30, 7)
    rows = [_row("be", winter, 6), _row("be", summer, 1)]
    available = {
        ("be", SERVICE, winter): (3600.0, 3600.0),
        ("be", SERVICE, summer): (3600.0, 1800.0),
        ("be", SERVICE, _utc(2026, 3, 30, 8)): (3600.0, 3600.0),  # summer 10:00, nothing served
    }
    (local,) = turned_away(rows, available, {"be": BERLIN})
    assert abs(local.estimated - 7 / 1.5 * 0.5) < 1e-9  # (6 + 1) per 1.5 h at 09:00, 0.5 h
    (utc,) = turned_away(rows, available)  # in UTC the summer hour 07:00 is another hour
    assert abs(utc.estimated - 1 / 0.5 * 0.5) < 1e-9


def test_the_report_week_is_the_halls_iso_week_in_whole_utc_hours() -> None:
    assert parse_week("2026-W48") == Range(_utc(2026, 11, 23), _utc(2026, 11, 30))
    assert parse_week("2026-W48", SHANGHAI) == Range(_utc(2026, 11, 22, 16), _utc(2026, 11, 29, 16))
    spring = parse_week("2026-W13", BERLIN)  # Monday 23 March to Monday 30 March, DST on Sunday
    assert spring == Range(_utc(2026, 3, 22, 23), _utc(2026, 3, 29, 22))
    assert spring.until - spring.since == timedelta(hours=167)
    autumn = parse_week("2026-W43", BERLIN)  # DST ends Sunday 25 October
    assert autumn.until - autumn.since == timedelta(hours=169)
    kolkata = parse_week("2026-W48", KOLKATA)  # local midnight is 18:30 UTC: from 19:00
    assert kolkata == Range(_utc(2026, 11, 22, 19), _utc(2026, 11, 29, 19))
    assert kolkata.since.astimezone(KOLKATA).date() == date(2026, 11, 23)


def test_the_sources_take_each_halls_zone_from_its_opening_hours() -> None:
    hours = {"sh": OpeningHours(timezone="Asia/Shanghai")}
    rows = [_row("sh", _utc(2026, 11, 23, 1), 4), _row("plain", _utc(2026, 11, 23, 1), 2)]
    sources = AnalyticsSources(
        rows=lambda *_args: rows,
        availability=lambda *_args: {},
        hours=lambda: hours,
        terminals=lambda: {},
    )
    r = Range(MONDAY - timedelta(days=1), MONDAY + timedelta(days=1))
    by_hour = {f.key: f.transactions for f in sources.transactions(r, GroupBy.HOUR_OF_WEEK)}
    assert by_hour == {1: 2, 9: 4}
    assert sources.zones() == {"sh": SHANGHAI}


def test_a_shanghai_halls_report_covers_its_local_week_and_names_its_zone() -> None:
    seen: list[tuple[datetime, datetime]] = []
    nine_local = _utc(2026, 11, 23, 1)  # Monday 09:00 in Shanghai

    def rows(since: datetime, until: datetime, *_filters: str | None) -> list[HourlyUsage]:
        seen.append((since, until))
        return [_row("sh", nine_local, 3)]

    sources = AnalyticsSources(
        rows=rows,
        availability=lambda *_args: {},
        hours=lambda: {"sh": OpeningHours(timezone="Asia/Shanghai")},
        terminals=lambda: {"T-sh": "sh"},
    )
    report = hall_week(sources, lambda *_args: [], "sh", "2026-W48")
    assert report.range == parse_week("2026-W48", SHANGHAI)
    assert set(seen) == {(report.range.since, report.range.until)}
    assert report.by_hour == {9: 3}
    assert report.timezone == "Asia/Shanghai"
    html = render_html(report, load_catalogs()["en"])
    assert "2026-11-23 \u2013 2026-11-29 (Asia/Shanghai)" in html  # local dates, not the 22nd
