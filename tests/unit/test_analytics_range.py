"""A caller's analytics range is bounded (server.analytics_report.report_range).

The figures walk every hall's opening hours day by day and read every rollup row of the
range, so an unbounded range from one viewer could keep the server busy for minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.analytics_report import MAX_SPAN, AnalyticsRangeError, report_range
from server.errors import ReportRefusedError
from server.hall_report import parse_week

NOW = datetime(2026, 12, 4, 20, 30, tzinfo=UTC)


def test_the_default_is_the_last_seven_days_in_whole_hours() -> None:
    r = report_range(None, None, NOW)
    assert (r.since, r.until) == (
        datetime(2026, 11, 27, 21, tzinfo=UTC),
        NOW.replace(hour=21, minute=0),
    )


def test_a_range_of_max_span_is_served_and_one_hour_more_is_refused() -> None:
    until = datetime(2026, 12, 1, tzinfo=UTC)
    assert report_range(until - MAX_SPAN, until, NOW).since == until - MAX_SPAN
    with pytest.raises(AnalyticsRangeError, match=f"at most {MAX_SPAN.days} days"):
        report_range(until - MAX_SPAN - timedelta(hours=1), until, NOW)


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), datetime(9998, 1, 1, tzinfo=UTC)),  # the attack
        (datetime(1999, 12, 31, tzinfo=UTC), None),
        (None, datetime(9999, 12, 31, 23, 30, tzinfo=UTC)),  # would overflow an hour up
        (datetime(2026, 12, 2, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),  # reversed
    ],
)
def test_ranges_out_of_bounds_or_reversed_are_refused(
    since: datetime | None, until: datetime | None
) -> None:
    with pytest.raises(AnalyticsRangeError):
        report_range(since, until, NOW)


def test_a_report_week_outside_2000_to_2100_is_refused_not_an_overflow() -> None:
    with pytest.raises(ReportRefusedError):
        parse_week("9999-W52")
    assert parse_week("2100-W01").since.year == 2100
