"""The weekly hall report's pure parts (server.hall_report): ISO weeks in UTC, paper
incidents counted in the week with the time out of paper clipped to it, and a page that
names no URL outside itself even for an empty week."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from server.analytics_report import AnalyticsSources
from server.console.i18n import load_catalogs
from server.errors import ReportRefusedError
from server.hall_report import PaperTransition, hall_week, paper_incidents, parse_week, render_html

WEEK = parse_week("2026-W48")


def _at(hours: float) -> datetime:
    return WEEK.since + timedelta(hours=hours)


def test_an_iso_week_runs_from_monday_midnight_utc_for_seven_days() -> None:
    assert WEEK.since == datetime(2026, 11, 23, tzinfo=UTC)
    assert WEEK.until == datetime(2026, 11, 30, tzinfo=UTC)
    assert parse_week("2026-W01").since == datetime(2025, 12, 29, tzinfo=UTC)  # ISO, not %W


@pytest.mark.parametrize("text", ["2026-48", "2026-W54", "2026-W00", "last", "2026-W4"])
def test_anything_but_an_iso_week_is_refused(text: str) -> None:
    with pytest.raises(ReportRefusedError):
        parse_week(text)


def test_paper_incidents_count_the_weeks_changes_and_clip_the_time_out_to_the_week() -> None:
    changes = [
        PaperTransition("T-2", "printer", "paper_out", _at(-5)),  # out at the start
        PaperTransition("T-2", "printer", "ok", _at(2)),  # 2 h in the week
        PaperTransition("T-1", "printer", "paper_low", _at(10)),
        PaperTransition("T-1", "printer", "paper_out", _at(11)),
        PaperTransition("T-1", "printer", "jam", _at(11.5)),  # 0.5 h out
        PaperTransition("T-3", "a4", "paper_out", _at(7 * 24 - 1)),  # 1 h, still out at the end
        PaperTransition("T-4", "printer", "paper_low", _at(7 * 24 + 1)),  # next week
    ]
    found = paper_incidents(changes, WEEK)
    assert found.count == 3
    assert found.terminals == ("T-1", "T-3")
    assert found.out_s == pytest.approx((2 + 0.5 + 1) * 3600)


def test_an_empty_week_renders_a_page_naming_no_outside_url() -> None:
    sources = AnalyticsSources(
        rows=lambda *_: [], availability=lambda *_: {}, hours=dict, terminals=dict
    )
    report = hall_week(sources, lambda *_: [], "hall-9", "2026-W48")
    assert report.summary is None
    assert report.availability_share is None
    html = render_html(report, load_catalogs()["en"])
    assert "No move recommended." in html
    assert "No transaction this week." in html
    assert re.findall(r"(?:src|href)=\"(?!data:)[^\"]*\"", html) == []
    assert not re.search(r"https?://", html)
