"""The API's query surface over real HTTP on a running server (real mosquitto; SQLite and
PostgreSQL where the database answers): unknown query parameters are refused on every
route, history and events take a time range and a cursor, and the terminal list and a
terminal's history export as CSV. The ``?health=`` filter is proven in test_server_api.py."""

from __future__ import annotations

import csv
import io
import re
import ssl
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from server.access import Role
from server.api_models import TerminalPublic, TransitionPublic
from server.est import EST_PREFIX
from server.main import Server
from tests.integration.conftest import (
    ServerFactory,
    TerminalFactory,
    admin_token,
    api,
    bearer,
    periph,
    token,
    unique,
    wait_until,
)
from tests.support.every_part import start_with_every_part
from tests.support.fleet_messages import PRINTER_OK, READER_OK

pytestmark = pytest.mark.integration


def _get(
    server: Server,
    path: str,
    secret: str | None = None,
    *,
    verify: ssl.SSLContext | bool = True,
    **params: Any,
) -> httpx.Response:
    secret = admin_token(server) if secret is None else secret
    return httpx.get(
        server.base_url + path, params=params, headers=bearer(secret), timeout=5, verify=verify
    )


def _csv(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.text)))


# --- unknown query parameters ---------------------------------------------------------------


def test_every_get_route_refuses_an_unknown_query_parameter_naming_it(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    # A route added later (server.api.add_routes) is guarded too. Every optional part is on
    # (device CA, registry, EST, HTTPS), so that all routes exist.
    server, verify = start_with_every_part(start_server, tmp_path / "ca")
    checked: list[str] = []
    for route in server.app.routes:
        if not isinstance(route, Route) or "GET" not in (route.methods or set()):
            continue
        path = re.sub(r"\{[^}]+\}", "nope", route.path)
        answer = _get(server, path, verify=verify, kf_no_such_param="1")
        assert answer.status_code == 422, (route.path, answer.status_code, answer.text)
        body = answer.json()
        assert body["error"] == "invalid_request"
        assert "unknown query parameter 'kf_no_such_param'" in body["message"], route.path
        assert body["detail"][0]["loc"] == ["query", "kf_no_such_param"]
        checked.append(route.path)
    assert {"/api/v1/terminals", "/api/v1/terminals.csv", "/api/v1/audit"} <= set(checked)
    assert any(p.startswith("/api/v1/registry/") for p in checked)
    assert any(p.startswith("/api/v1/halls/") for p in checked)  # opening hours, added later
    assert any(p.startswith(EST_PREFIX) for p in checked)
    assert "/openapi.json" in checked


def test_a_misspelt_filter_is_a_422_that_lists_the_allowed_parameters(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    answer = _get(server, "/api/v1/terminals", healthh="faulty")
    assert answer.status_code == 422
    message = answer.json()["message"]
    assert message.startswith("unknown query parameter 'healthh'; allowed: ")
    allowed = set(message.partition("allowed: ")[2].split(", "))
    assert {"health", "hall", "region", "state", "limit", "cursor"} <= allowed
    declared = next(
        r for r in server.app.routes if isinstance(r, APIRoute) and r.path == "/api/v1/terminals"
    )
    assert declared.name == "list_terminals"
    # declared parameters still pass
    assert _get(server, "/api/v1/terminals", health="faulty", limit=5).status_code == 200


# --- history and events: time range and cursor ----------------------------------------------


def _transitions(server: Server, terminal_id: str, n: int) -> list[dict[str, Any]]:
    def stored() -> list[dict[str, Any]] | None:
        body = _get(server, f"/api/v1/terminals/{terminal_id}", history_limit=100).json()
        items: list[dict[str, Any]] = body.get("transitions", [])
        return items if len(items) >= n else None

    found: list[dict[str, Any]] = wait_until(stored, 10, f"{n} transitions to be stored")
    return found


def _walk(server: Server, path: str, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        extra: dict[str, Any] = {"cursor": cursor} if cursor else {}
        answer = _get(server, path, limit=limit, **params, **extra)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def _flip_printer(t: Any, times: int) -> None:
    t.report([PRINTER_OK, READER_OK])
    previous = "ok"
    for i in range(times):
        condition = ("paper_out", "jam", "ok")[i % 3]
        extra = {"fault_code": f"E{i}"} if condition != "ok" else {}
        t.event(periph("printer", "receipt_printer", condition, **extra), previous)
        previous = condition


def test_history_pages_newest_first_with_a_stable_cursor_and_a_time_range(
    start_server: ServerFactory, terminals: TerminalFactory, database_url: str
) -> None:
    server = start_server(database_url=database_url)
    t = terminals()
    _flip_printer(t, 6)
    every = _transitions(server, t.id, 7)  # first contact + six printer changes
    path = f"/api/v1/terminals/{t.id}/history"

    pages = _walk(server, path, limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [item for p in pages for item in p] == every

    since = datetime.fromisoformat(every[4]["recorded_at"])
    until = datetime.fromisoformat(every[1]["recorded_at"])
    expected = [x for x in every if since <= datetime.fromisoformat(x["recorded_at"]) < until]
    assert expected  # the range is not empty
    ranged = _walk(server, path, limit=2, since=since.isoformat(), until=until.isoformat())
    assert [item for p in ranged for item in p] == expected


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"since": "2026-01-02T00:00:00+00:00", "until": "2026-01-01T00:00:00+00:00"}, "before"),
        ({"since": "2026-01-01T00:00:00+00:00", "until": "2026-01-01T00:00:00+00:00"}, "before"),
        ({"since": "2026-01-01T00:00:00"}, "offset"),
        ({"until": "yesterday"}, "until"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 100000}, "limit"),
    ],
)
def test_a_bad_range_cursor_or_page_size_is_a_422_naming_it(
    start_server: ServerFactory, terminals: TerminalFactory, params: dict[str, Any], said: str
) -> None:
    server = start_server()
    t = terminals()
    t.report([PRINTER_OK])
    _transitions(server, t.id, 1)
    for path in (f"/api/v1/terminals/{t.id}/history", f"/api/v1/terminals/{t.id}/events"):
        answer = _get(server, path, **params)
        assert answer.status_code == 422, (path, answer.text)
        assert said in answer.json()["message"], (path, answer.json())


def test_events_page_by_cursor_within_a_time_range_and_hide_delivery_from_a_viewer(
    start_server: ServerFactory, terminals: TerminalFactory, database_url: str
) -> None:
    server = start_server(database_url=database_url)
    t = terminals()
    _flip_printer(t, 5)
    path = f"/api/v1/terminals/{t.id}/events"

    def five() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = _get(server, path, limit=100).json().get("items", [])
        return items if len(items) == 5 else None

    every = wait_until(five, 10, "five stored events")
    pages = _walk(server, path, limit=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [item for p in pages for item in p] == every
    assert [e["seq"] for e in every] == sorted((e["seq"] for e in every), reverse=True)

    until = datetime.fromisoformat(every[1]["received_at"])
    older = _walk(server, path, limit=10, until=until.isoformat())
    assert [item for p in older for item in p] == [
        e for e in every if datetime.fromisoformat(e["received_at"]) < until
    ]
    later = datetime.fromisoformat(every[0]["received_at"]) + timedelta(seconds=1)
    assert _get(server, path, since=later.isoformat()).json()["items"] == []

    viewer = _get(server, path, token(server, Role.VIEWER), limit=100).json()["items"]
    assert [(e["boot_id"], e["seq"]) for e in viewer] == [(None, None)] * 5


# --- CSV ------------------------------------------------------------------------------------


def test_the_filtered_terminal_list_exports_as_csv_with_the_json_lists_fields_and_rows(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    hall = unique("Hall")
    made = [terminals(f"{hall}-{i}", hall=hall) for i in range(4)]
    for i, t in enumerate(made):
        t.report([periph("printer", "receipt_printer", "jam") if i % 2 else PRINTER_OK])
    wait_until(
        lambda: api(server, "/api/v1/terminals", hall=hall).json()["total"] == 4,
        what="four terminals",
    )
    filters: dict[str, Any] = {"hall": hall, "health": "faulty"}
    listed = _get(server, "/api/v1/terminals", **filters).json()["items"]
    assert [x["id"] for x in listed] == [made[1].id, made[3].id]

    viewer = token(server, Role.VIEWER)
    response = _get(server, "/api/v1/terminals.csv", viewer, **filters)
    assert "attachment" in response.headers["content-disposition"]
    header, *rows = _csv(response)
    assert header == list(TerminalPublic.model_fields)  # the fields, declared once
    assert not {"boot_id", "last_seq"} & set(header)
    by_column = [dict(zip(header, row, strict=True)) for row in rows]
    assert [r["id"] for r in by_column] == [x["id"] for x in listed]
    assert [r["health"] for r in by_column] == ["faulty", "faulty"]
    assert [r["hall"] for r in by_column] == [hall, hall]
    assert '"condition":"jam"' in by_column[0]["peripherals"]

    assert _get(server, "/api/v1/terminals.csv", token(server, Role.VENDOR)).status_code == 403
    refused = _get(server, "/api/v1/terminals.csv", viewer, health="degraded")
    assert refused.status_code == 422


def test_a_terminals_history_exports_as_csv_in_its_range_with_formulas_defused(
    start_server: ServerFactory, terminals: TerminalFactory, database_url: str
) -> None:
    server = start_server(database_url=database_url)
    t = terminals()
    t.report([PRINTER_OK, READER_OK])
    t.event(periph("printer", "receipt_printer", "jam", fault_code="=HYPERLINK(1)"), "ok")
    t.event(periph("printer", "receipt_printer", "paper_out", fault_code="-2+3"), "jam")
    t.event(periph("printer", "receipt_printer", "ok"), "paper_out")
    every = _transitions(server, t.id, 4)

    header, *rows = _csv(_get(server, f"/api/v1/terminals/{t.id}/history.csv"))
    assert header == list(TransitionPublic.model_fields)
    by_column = [dict(zip(header, row, strict=True)) for row in rows]
    assert [(r["subject"], r["to_state"]) for r in by_column] == [
        (x["subject"], x["to_state"]) for x in every
    ]
    codes = [r["fault_code"] for r in by_column]
    assert codes[1:3] == ["'-2+3", "'=HYPERLINK(1)"]  # a leading ' : text, not a formula

    since = datetime.fromisoformat(every[2]["recorded_at"])
    _, *ranged = _csv(
        _get(server, f"/api/v1/terminals/{t.id}/history.csv", since=since.isoformat())
    )
    expected = [x for x in every if datetime.fromisoformat(x["recorded_at"]) >= since]
    assert len(ranged) == len(expected)
    viewer = token(server, Role.VIEWER)
    assert _get(server, f"/api/v1/terminals/{t.id}/history.csv", viewer).status_code == 200
    assert _get(server, "/api/v1/terminals/NOPE-1/history.csv").status_code == 404
