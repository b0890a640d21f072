"""A hall's opening hours through the API on SQLite and PostgreSQL: an operator sets them
(refused to a viewer, audited as ``hall.hours.set``), a viewer reads them and asks whether
the hall is open at a time; bad hours and naive times are refused with the reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from server.access import Role
from server.access_store import AuditFilter
from server.audit import AuditResult
from server.main import Server
from server.opening_hours import OpeningHours, is_open
from tests.integration.conftest import ServerFactory, bearer, token

pytestmark = pytest.mark.integration

HOURS: dict[str, Any] = {
    "timezone": "Europe/Berlin",
    "weekly": {day: [{"start": "08:00", "end": "20:00"}] for day in ("mon", "tue", "wed")},
    "holidays": [{"date": "2026-12-23"}],  # a Wednesday
}


@pytest.fixture
def server(start_server: ServerFactory, database_url: str) -> Server:
    return start_server(database_url=database_url)


def _url(server: Server, hall: str, tail: str = "opening-hours") -> str:
    return f"{server.base_url}/api/v1/halls/{quote(hall, safe='')}/{tail}"


def test_an_operator_sets_hours_a_viewer_reads_them_and_asks_whether_the_hall_is_open(
    server: Server,
) -> None:
    operator = bearer(token(server, Role.OPERATOR, name="ops-hours"))
    viewer = bearer(token(server, Role.VIEWER))

    assert httpx.put(_url(server, "Hall A"), json=HOURS, headers=viewer).status_code == 403
    done = httpx.put(_url(server, "Hall A"), json=HOURS, headers=operator, timeout=5)

    assert done.status_code == 200, done.text
    read = httpx.get(_url(server, "Hall A"), headers=viewer, timeout=5)
    assert read.status_code == 200, read.text
    assert read.json()["hours"] == {
        **HOURS,
        "holidays": [{"date": "2026-12-23", "hours": []}],
    }
    assert read.json()["updated_by"] == "token:ops-hours"
    monday = httpx.get(
        _url(server, "Hall A", "open"), params={"at": "2026-12-21T12:00:00+01:00"}, headers=viewer
    ).json()
    assert monday["open"] is True
    assert monday["closed_window"] == {
        "start": "2026-12-21T19:00:00Z",
        "end": "2026-12-22T07:00:00Z",
    }
    holiday = httpx.get(
        _url(server, "Hall A", "open"), params={"at": "2026-12-23T12:00:00Z"}, headers=viewer
    ).json()
    assert holiday["open"] is False
    assert holiday["closed_window"]["end"] == "2026-12-28T07:00:00Z"  # next Monday 08:00
    entries = server.access_store.audit(AuditFilter(actor="token:ops-hours"), limit=10).items
    assert [(e.action, e.target, e.result) for e in entries] == [
        ("hall.hours.set", "Hall A", AuditResult.OK)
    ]


def test_setting_hours_again_replaces_them_whole(server: Server) -> None:
    operator = bearer(token(server, Role.OPERATOR))
    assert httpx.put(_url(server, "B"), json=HOURS, headers=operator).status_code == 200
    later = {"timezone": "Asia/Tokyo", "weekly": {"sun": [{"start": "10:00", "end": "12:00"}]}}

    assert httpx.put(_url(server, "B"), json=later, headers=operator).status_code == 200

    hours = httpx.get(_url(server, "B"), headers=operator).json()["hours"]
    assert (hours["timezone"], list(hours["weekly"]), hours["holidays"]) == (
        "Asia/Tokyo",
        ["sun"],
        [],
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"timezone": "Nowhere/Atlantis"}, "not a known IANA time zone"),
        (
            {"timezone": "UTC", "weekly": {"fri": [{"start": "22:00", "end": "02:00"}]}},
            "never crosses midnight",
        ),
        ({"timezone": "UTC", "holidays": [{"date": "2026-12-25"}] * 2}, "listed twice"),
    ],
)
def test_bad_hours_are_refused_with_the_reason_and_nothing_is_stored(
    server: Server, body: dict[str, Any], reason: str
) -> None:
    operator = bearer(token(server, Role.OPERATOR))
    refused = httpx.put(_url(server, "C"), json=body, headers=operator)
    assert refused.status_code == 422
    assert reason in refused.text
    missing = httpx.get(_url(server, "C"), headers=operator)
    assert (missing.status_code, missing.json()["error"]) == (404, "no_opening_hours")


def test_open_refuses_a_time_without_an_offset_and_a_hall_without_hours(server: Server) -> None:
    viewer = bearer(token(server, Role.VIEWER))
    operator = bearer(token(server, Role.OPERATOR))
    assert httpx.put(_url(server, "D"), json=HOURS, headers=operator).status_code == 200

    naive = httpx.get(_url(server, "D", "open"), params={"at": "2026-12-21T12:00"}, headers=viewer)
    assert (naive.status_code, naive.json()["error"]) == (422, "invalid_time")
    unknown = httpx.get(_url(server, "nowhere", "open"), headers=viewer)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "no_opening_hours")
    before = datetime.now(UTC)
    now = httpx.get(_url(server, "D", "open"), headers=viewer)
    after = datetime.now(UTC)
    assert now.status_code == 200
    answered_at = datetime.fromisoformat(now.json()["at"])
    assert before <= answered_at <= after  # left out, ``at`` is the server's now
    assert now.json()["open"] is is_open(OpeningHours.model_validate(HOURS), answered_at)


def test_hours_for_one_hall_more_than_the_bound_are_refused_and_known_halls_still_change(
    start_server: ServerFactory, database_url: str
) -> None:
    server = start_server(database_url=database_url, opening_hours_max_halls=2)
    operator = bearer(token(server, Role.OPERATOR, name="ops-bound"))
    for hall in ("Hall A", "Hall B"):
        assert httpx.put(_url(server, hall), json=HOURS, headers=operator).status_code == 200

    refused = httpx.put(_url(server, "Hall C"), json=HOURS, headers=operator, timeout=5)

    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "too_many_halls"
    assert httpx.get(_url(server, "Hall C"), headers=operator).status_code == 404
    changed = {**HOURS, "timezone": "Europe/Paris"}
    again = httpx.put(_url(server, "Hall A"), json=changed, headers=operator, timeout=5)
    assert again.status_code == 200, again.text  # replacing a known hall's hours is no new row
    assert again.json()["hours"]["timezone"] == "Europe/Paris"
