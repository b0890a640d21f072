"""The analytics API and console page refuse an unbounded range with 422 (a viewer could
otherwise keep the server busy for minutes: server.analytics_report.MAX_SPAN)."""

from __future__ import annotations

import httpx
import pytest

from server.access import Role
from server.console.web import CONSOLE_PREFIX
from tests.integration.conftest import ServerFactory, bearer, token
from tests.integration.test_console import _httpx_login, add_user

pytestmark = pytest.mark.integration

ATTACK = {"since": "0001-01-01T00:00:00Z", "until": "9998-01-01T00:00:00Z"}


def test_a_viewer_asking_for_ten_thousand_years_gets_422_from_every_analytics_route(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    viewer = token(server, Role.VIEWER, name="curious")
    for route in ("transactions", "utilisation", "availability", "turned-away"):
        answer = httpx.get(
            f"{server.base_url}/api/v1/analytics/{route}",
            params=ATTACK,
            headers=bearer(viewer),
            timeout=10,
        )
        assert answer.status_code == 422, (route, answer.text)
        assert "between 2000 and 2100" in answer.text
    long = {"since": "2026-01-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"}
    answer = httpx.get(
        f"{server.base_url}/api/v1/analytics/utilisation",
        params=long,
        headers=bearer(viewer),
        timeout=10,
    )
    assert answer.status_code == 422
    assert "at most 93 days" in answer.text
    fine = {"since": "2026-11-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"}
    answer = httpx.get(
        f"{server.base_url}/api/v1/analytics/utilisation",
        params=fine,
        headers=bearer(viewer),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text

    add_user(server, "vera", Role.VIEWER)
    client = _httpx_login(server, "vera")
    page = client.get(
        CONSOLE_PREFIX + "/analytics",
        params={"since": "0001-01-01T00:00", "until": "9998-01-01T00:00"},
    )
    assert page.status_code == 422
