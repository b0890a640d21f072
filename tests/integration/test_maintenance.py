"""Maintenance windows and problem acks on a live server over real mosquitto, on SQLite and
PostgreSQL: an operator starts a window (a viewer gets 403), the terminal's problem series
leave /metrics and come back when ``until`` passes or the window ends; a hall's window
silences every terminal of it; acks last while their problem lasts; every change is in the
audit log; the bounds are enforced; the retention prunes ended rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from kioskfleet.cli import main
from protocol.messages import PeripheralCondition
from server.access import Role
from server.access_store import AuditFilter
from server.audit import AuditResult
from server.main import Server
from server.maintenance import MaintenanceWindow, ProblemAck, Scope
from server.maintenance_store import MaintenanceStore
from server.storage import Storage
from tests.integration.conftest import (
    ServerFactory,
    TerminalFactory,
    api,
    bearer,
    periph,
    token,
    unique,
    wait_until,
)
from tests.integration.test_metrics_endpoint import parse, scrape_text

pytestmark = pytest.mark.integration

PAPER_OUT = periph("printer", "receipt_printer", "paper_out")
PAPER_OK = periph("printer", "receipt_printer", "ok")


@pytest.fixture
def server(start_server: ServerFactory, database_url: str) -> Server:
    return start_server(database_url=database_url)


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _problem_terminals(server: Server) -> set[str]:
    names = {"kioskfleet_terminal_offline", "kioskfleet_terminal_peripheral_problem"}
    return {
        dict(labels)["terminal"] for name, labels in parse(scrape_text(server)) if name in names
    }


def _gauge(server: Server, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in parse(scrape_text(server)).items() if n == name}


def _audited(server: Server, actor: str, n: int) -> list[tuple[str, str | None, AuditResult]]:
    """``actor``'s newest audit entries once there are ``n`` (the middleware records an entry
    after the answer is sent)."""

    def entries() -> list[tuple[str, str | None, AuditResult]] | None:
        found = server.access_store.audit(AuditFilter(actor=actor), limit=n + 1).items
        return [(e.action, e.target, e.result) for e in found] if len(found) >= n else None

    listed: list[tuple[str, str | None, AuditResult]] = wait_until(entries, 10, "the audit")
    return listed


def _maintenance(server: Server, path: str) -> str:
    return f"{server.base_url}/api/v1/{path}/maintenance"


def test_a_terminal_in_maintenance_exports_no_problem_series_until_its_window_ends(
    server: Server, terminals: TerminalFactory
) -> None:
    region, hall = unique("R"), unique("H")
    quiet = terminals(hall=hall, region=region)
    quiet.report([PAPER_OUT])
    loud = terminals(hall=hall, region=region)
    loud.report([PAPER_OUT])
    wait_until(lambda: {quiet.id, loud.id} <= _problem_terminals(server), 10, "both paper out")
    operator = bearer(token(server, Role.OPERATOR, name="ops-maint"))
    viewer = bearer(token(server, Role.VIEWER))
    body = {"reason": "printer being replaced", "until": _in(3)}

    url = _maintenance(server, f"terminals/{quiet.id}")
    assert httpx.put(url, json=body, headers=viewer, timeout=5).status_code == 403
    started = httpx.put(url, json=body, headers=operator, timeout=5)

    assert started.status_code == 200, started.text
    assert started.json()["started_by"] == "token:ops-maint"
    problems = _problem_terminals(server)  # at once: the API invalidated the cache
    assert quiet.id not in problems
    assert loud.id in problems
    assert _gauge(server, "kioskfleet_terminal_maintenance") == {
        frozenset({"terminal": quiet.id, "hall": hall, "region": region}.items()): 1
    }
    listed = httpx.get(f"{server.base_url}/api/v1/maintenance", headers=viewer, timeout=5)
    assert [(w["scope"], w["target"]) for w in listed.json()["items"]] == [("terminal", quiet.id)]
    detail = httpx.get(f"{server.base_url}/api/v1/terminals/{quiet.id}", headers=viewer).json()
    assert [w["reason"] for w in detail["operator"]["maintenance"]] == ["printer being replaced"]
    # until passes: the window ends by itself, the problem is exported again
    wait_until(lambda: quiet.id in _problem_terminals(server), 10, "the window to end")
    assert _gauge(server, "kioskfleet_terminal_maintenance") == {}
    assert httpx.get(f"{server.base_url}/api/v1/maintenance", headers=viewer).json() == {
        "items": []
    }
    assert _audited(server, "token:ops-maint", 1) == [
        ("terminal.maintenance.start", quiet.id, AuditResult.OK)
    ]
    (entry,) = server.access_store.audit(AuditFilter(actor="token:ops-maint"), limit=2).items
    assert entry.detail["reason"] == "printer being replaced"


def test_a_hall_window_silences_its_terminals_and_ending_it_brings_them_back(
    server: Server, terminals: TerminalFactory
) -> None:
    region, hall = unique("R"), unique("H")
    t = terminals(hall=hall, region=region)
    t.report([PAPER_OUT])
    wait_until(lambda: t.id in _problem_terminals(server), 10, "paper out exported")
    operator = bearer(token(server, Role.OPERATOR, name="ops-hall"))
    url = _maintenance(server, f"halls/{quote(hall, safe='')}")

    started = httpx.put(url, json={"reason": "renovation", "until": _in(3600)}, headers=operator)

    assert started.status_code == 200, started.text
    assert t.id not in _problem_terminals(server)
    hall_gauge = _gauge(server, "kioskfleet_hall_maintenance")
    assert hall_gauge[frozenset({"region": region, "hall": hall}.items())] == 1
    viewer = bearer(token(server, Role.VIEWER))
    assert httpx.delete(url, headers=viewer).status_code == 403
    ended = httpx.delete(url, headers=operator, timeout=5)
    assert ended.status_code == 200, ended.text
    assert t.id in _problem_terminals(server)
    assert httpx.delete(url, headers=operator, timeout=5).status_code == 404
    assert _audited(server, "token:ops-hall", 3) == [
        ("hall.maintenance.end", hall, AuditResult.FAILED),  # nothing to end: 404
        ("hall.maintenance.end", hall, AuditResult.OK),
        ("hall.maintenance.start", hall, AuditResult.OK),
    ]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"reason": "x", "until": "2020-01-01T00:00:00Z"}, 422, "until_in_the_past"),
        ({"reason": "x", "until": "2099-01-01T00:00:00Z"}, 422, "until_too_far"),
        ({"reason": "x", "until": "2099-01-01T00:00:00"}, 422, "invalid_request"),
        ({"reason": "x" * 501, "until": "2099-01-01T00:00:00Z"}, 422, "invalid_request"),
        ({"reason": "", "until": "2099-01-01T00:00:00Z"}, 422, "invalid_request"),
        ({"until": "2099-01-01T00:00:00Z"}, 422, "invalid_request"),
    ],
)
def test_a_window_must_end_within_the_limit_and_give_a_bounded_reason(
    server: Server, body: dict[str, Any], status: int, error: str
) -> None:
    operator = bearer(token(server, Role.OPERATOR))
    answer = httpx.put(_maintenance(server, "terminals/KF-1"), json=body, headers=operator)
    assert (answer.status_code, answer.json()["error"]) == (status, error)


def test_active_windows_are_bounded_fleet_wide(
    start_server: ServerFactory, database_url: str
) -> None:
    server = start_server(database_url=database_url, maintenance_max_windows=2)
    operator = bearer(token(server, Role.OPERATOR))
    body = {"reason": "r", "until": _in(600)}
    for tid in ("KF-1", "KF-2", "KF-2"):  # replacing a window adds none
        answer = httpx.put(_maintenance(server, f"terminals/{tid}"), json=body, headers=operator)
        assert answer.status_code == 200, answer.text

    third = httpx.put(_maintenance(server, "terminals/KF-3"), json=body, headers=operator)

    assert (third.status_code, third.json()["error"]) == (409, "too_many_windows")


def test_an_ack_lasts_while_its_problem_lasts_and_a_new_problem_is_unacked(
    server: Server, terminals: TerminalFactory
) -> None:
    t = terminals(hall=unique("H"))
    t.report([PAPER_OUT])
    wait_until(lambda: t.id in _problem_terminals(server), 10, "paper out")
    operator = bearer(token(server, Role.OPERATOR, name="ops-ack"))
    viewer = bearer(token(server, Role.VIEWER))
    url = f"{server.base_url}/api/v1/terminals/{t.id}/problems/printer/ack"
    body = {"note": "paper on the way", "assignee": "li.wei"}

    assert httpx.post(url, json=body, headers=viewer).status_code == 403
    acked = httpx.post(url, json=body, headers=operator, timeout=5)

    assert acked.status_code == 200, acked.text

    def problems() -> list[dict[str, Any]]:
        answer = httpx.get(f"{server.base_url}/api/v1/problems", headers=viewer, timeout=5)
        assert answer.status_code == 200, answer.text
        return [p for p in answer.json()["items"] if p["terminal_id"] == t.id]

    (listed,) = problems()
    assert (listed["ack"]["note"], listed["ack"]["assignee"]) == ("paper on the way", "li.wei")
    assert listed["in_maintenance"] is False
    assert t.id in _problem_terminals(server)  # acked problems still alert
    detail = api(server, f"/api/v1/terminals/{t.id}").json()
    assert [a["acked_by"] for a in detail["operator"]["acknowledged"]] == ["token:ops-ack"]

    t.report([PAPER_OK])  # refilled: the ack ends with its problem
    wait_until(lambda: not problems(), 10, "the problem to clear")
    t.report([PAPER_OUT])  # out again: a new problem, nobody acked it
    (again,) = wait_until(problems, 10, "the new problem")
    assert again["ack"] is None
    assert api(server, f"/api/v1/terminals/{t.id}").json()["operator"]["acknowledged"] == []
    t.report([PAPER_OK])
    wait_until(lambda: not problems(), 10, "the problem to clear again")
    refused = httpx.post(url, json=body, headers=operator, timeout=5)
    assert (refused.status_code, refused.json()["error"]) == (409, "no_current_problem")
    assert _audited(server, "token:ops-ack", 2) == [
        ("problem.ack", f"{t.id}/printer", AuditResult.FAILED),
        ("problem.ack", f"{t.id}/printer", AuditResult.OK),
    ]


@pytest.fixture
def store(database_url: str) -> Iterator[MaintenanceStore]:
    """The store on a migrated database with no server (whose pruner would race the test)."""
    storage = Storage(database_url)
    storage.open()
    try:
        yield MaintenanceStore(storage)
    finally:
        storage.close()


def test_the_retention_prunes_ended_windows_and_old_acks_only(store: MaintenanceStore) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    old, recent = now - timedelta(days=100), now - timedelta(days=1)
    for target, until in (("old", old), ("recent", recent), ("active", now + timedelta(days=1))):
        store.put_window(
            MaintenanceWindow(Scope.TERMINAL, target, "r", until, until - timedelta(hours=1), "t")
        )
    for peripheral, at in (("p-old", old), ("p-recent", recent)):
        store.put_ack(
            ProblemAck("KF-1", peripheral, at, PeripheralCondition.PAPER_OUT, "n", None, at, "t")
        )

    deleted = store.prune(older_than=timedelta(days=90), now=now)

    assert deleted == 2
    assert [w.target for w in store.windows()] == ["active", "recent"]
    assert [a.peripheral for a in store.acks()] == ["p-recent"]


def test_the_cli_starts_lists_and_ends_maintenance_and_acks_through_the_api(
    server: Server,
    terminals: TerminalFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hall = unique("H")
    t = terminals(hall=hall)
    t.report([PAPER_OUT])
    wait_until(lambda: t.id in _problem_terminals(server), 10, "paper out")
    files = {}
    for role in (Role.OPERATOR, Role.VIEWER):
        files[role] = tmp_path / f"{role.value}.token"
        files[role].write_text(token(server, role, name=unique(role.value)) + "\n")

    def cli(role: Role, *words: str) -> int:
        flags = ["--server", server.base_url, "--token-file", str(files[role])]
        return main([*words, *flags])

    assert (
        cli(
            Role.OPERATOR,
            "maintenance",
            "start",
            "--hall",
            hall,
            "--reason",
            "paint",
            "--for",
            "2h",
        )
        == 0
    )
    started = json.loads(capsys.readouterr().out)
    assert (started["scope"], started["target"], started["reason"]) == ("hall", hall, "paint")
    assert t.id not in _problem_terminals(server)
    assert cli(Role.VIEWER, "maintenance", "list") == 0
    assert [w["target"] for w in json.loads(capsys.readouterr().out)["items"]] == [hall]
    assert cli(Role.VIEWER, "maintenance", "end", "--hall", hall) == 1
    assert "refused (403)" in capsys.readouterr().err
    assert cli(Role.OPERATOR, "maintenance", "end", "--hall", hall) == 0
    capsys.readouterr()
    assert t.id in _problem_terminals(server)
    assert (
        cli(
            Role.OPERATOR,
            "maintenance",
            "start",
            "--terminal",
            t.id,
            "--reason",
            "r",
            "--for",
            "2x",
        )
        == 2
    )
    assert "not a duration" in capsys.readouterr().err

    assert (
        cli(
            Role.OPERATOR,
            "problem",
            "ack",
            t.id,
            "printer",
            "--note",
            "on it",
            "--assignee",
            "wang",
        )
        == 0
    )
    acked = json.loads(capsys.readouterr().out)
    assert (acked["peripheral"], acked["assignee"], acked["condition"]) == (
        "printer",
        "wang",
        "paper_out",
    )
