"""A directive's install window from its hall's hours (server/install_window.py, pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.install_window import InstallWindow, NoWindow, install_window
from server.opening_hours import OpeningHours

# A Thursday, 10:00 UTC; the hall (Berlin, UTC+1 in December) is open 08:00-18:00 local.
NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
WEEKDAYS = {d: [{"start": "08:00", "end": "18:00"}] for d in ("mon", "tue", "wed", "thu", "fri")}
HOURS = OpeningHours.model_validate({"timezone": "Europe/Berlin", "weekly": WEEKDAYS})
DAY = timedelta(hours=24)


def test_an_open_hall_gets_a_window_from_its_closing_to_its_next_opening() -> None:
    window = install_window(HOURS, NOW, lifetime=DAY, install_while_open=False)
    assert window == InstallWindow(
        not_before=datetime(2026, 12, 3, 17, 0, tzinfo=UTC),  # 18:00 Berlin
        not_after=datetime(2026, 12, 4, 7, 0, tzinfo=UTC),  # 08:00 Berlin, next morning
        expires_at=NOW + DAY,
        install_while_open=False,
    )


def test_a_window_is_cut_at_the_directive_expiry() -> None:
    window = install_window(HOURS, NOW, lifetime=timedelta(hours=12), install_while_open=False)
    assert isinstance(window, InstallWindow)
    assert window.not_after == window.expires_at == NOW + timedelta(hours=12)


def test_a_closed_hall_installs_from_now() -> None:
    night = datetime(2026, 12, 3, 22, 0, tzinfo=UTC)
    window = install_window(HOURS, night, lifetime=DAY, install_while_open=False)
    assert isinstance(window, InstallWindow)
    assert window.not_before == night


def test_the_override_installs_from_now_and_says_so() -> None:
    window = install_window(HOURS, NOW, lifetime=DAY, install_while_open=True)
    assert window == InstallWindow(NOW, NOW + DAY, NOW + DAY, install_while_open=True)


def test_a_hall_without_hours_is_not_restricted() -> None:
    window = install_window(None, NOW, lifetime=DAY, install_while_open=False)
    assert window == InstallWindow(NOW, NOW + DAY, NOW + DAY, install_while_open=False)


def test_a_hall_closing_after_the_directive_expires_gets_no_directive() -> None:
    refused = install_window(HOURS, NOW, lifetime=timedelta(hours=7), install_while_open=False)
    assert isinstance(refused, NoWindow)
    assert "after the directive would expire" in refused.reason


def test_a_hall_that_never_closes_gets_no_directive_unless_overridden() -> None:
    always = OpeningHours.model_validate(
        {
            "timezone": "UTC",
            "weekly": {
                d: [{"start": "00:00", "end": "24:00"}]
                for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            },
        }
    )
    assert isinstance(install_window(always, NOW, lifetime=DAY, install_while_open=False), NoWindow)
    assert isinstance(
        install_window(always, NOW, lifetime=DAY, install_while_open=True), InstallWindow
    )


def test_a_hall_that_never_opens_again_is_open_until_the_expiry() -> None:
    closed = OpeningHours.model_validate({"timezone": "UTC"})
    window = install_window(closed, NOW, lifetime=DAY, install_while_open=False)
    assert window == InstallWindow(NOW, NOW + DAY, NOW + DAY, install_while_open=False)


def test_a_lifetime_that_is_not_positive_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="positive"):
        install_window(HOURS, NOW, lifetime=timedelta(0), install_while_open=False)
