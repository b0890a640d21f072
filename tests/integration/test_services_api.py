"""The service catalogue over the API and the CLI (SQLite and PostgreSQL): roles, refusals,
audit, and what a terminal can offer now in its API view and the hall gauge."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server.access import Role
from server.access_store import AccessStore, AuditFilter
from server.audit import AuditResult
from tests.integration.conftest import ServerFactory, TerminalFactory, bearer, metric, token
from tests.support.fleet_messages import READER_OK, periph
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = {
    "services": [
        {"code": "tax.invoice.print", "needs": ["printer"]},
        {"code": "police.residence_permit.renew", "needs": ["identity_reader"]},
    ]
}


def _put(base: str, secret: str, body: object) -> httpx.Response:
    return httpx.put(f"{base}/api/v1/services", json=body, headers=bearer(secret), timeout=5)


def _get(base: str, path: str, secret: str) -> httpx.Response:
    return httpx.get(f"{base}{path}", headers=bearer(secret), timeout=5)


def test_operators_set_the_catalogue_viewers_read_it_and_a_bad_one_is_refused(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    base = server.base_url
    viewer, operator = token(server, Role.VIEWER), token(server, Role.OPERATOR)

    assert _put(base, viewer, CATALOGUE).status_code == 403
    assert _put(base, operator, CATALOGUE).status_code == 200
    read = _get(base, "/api/v1/services", viewer)
    assert read.status_code == 200
    assert read.json() == CATALOGUE
    bad = _put(base, operator, {"services": [{"code": "Print my invoice", "needs": ["toaster"]}]})
    assert bad.status_code == 422
    assert "services.0.code" in bad.text
    assert _get(base, "/api/v1/services", viewer).json() == CATALOGUE  # unchanged
    entries = AccessStore(server.storage).audit(
        AuditFilter(action="service.catalogue.set"), limit=10
    )
    assert [e.result for e in reversed(entries.items)] == [
        AuditResult.DENIED,
        AuditResult.OK,
        AuditResult.FAILED,
    ]


def test_a_terminal_out_of_paper_offers_only_the_identity_services_in_its_view_and_gauge(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server(services_metrics_refresh_s=0.01)
    operator = token(server, Role.OPERATOR)
    assert _put(server.base_url, operator, CATALOGUE).status_code == 200
    terminal = terminals(hall="Hall 3", region="East")
    terminal.report([periph("printer", "receipt_printer", "paper_out"), READER_OK])

    def offered() -> list[str] | None:
        found = _get(server.base_url, f"/api/v1/terminals/{terminal.id}", operator)
        return found.json()["services_available"] if found.status_code == 200 else None

    wait_until(lambda: offered() == ["police.residence_permit.renew"], 10, "the terminal view")
    where = {"region": "East", "hall": "Hall 3"}
    name = "kioskfleet_hall_services_available"
    assert metric(server, name, **where, service="police.residence_permit.renew") == 1
    assert metric(server, name, **where, service="tax.invoice.print") == 0
    assert (
        server.registry.get_sample_value(name, {**where, "service": "tax.invoice.print"}) == 0
    )  # present, at zero


def _kioskfleet(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_") or "TEST" in k}
    env["KIOSKFLEET_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "service", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_catalogue_set_at_the_command_line_is_listed_served_and_audited(
    database_url: str, tmp_path: Path, start_server: ServerFactory
) -> None:
    file = tmp_path / "catalogue.json"
    file.write_text(json.dumps(CATALOGUE))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"services": [{"code": "tax.invoice.print", "name": "Invoices"}]}))

    assert _kioskfleet(database_url, "set", "--file", str(bad)).returncode == 1
    done = _kioskfleet(database_url, "set", "--file", str(file))
    assert done.returncode == 0, done.stderr
    listed = _kioskfleet(database_url, "list")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == CATALOGUE
    server = start_server(database_url=database_url)
    served = _get(server.base_url, "/api/v1/services", token(server, Role.VIEWER))
    assert served.json() == CATALOGUE
    entries = AccessStore(server.storage).audit(
        AuditFilter(action="service.catalogue.set"), limit=10
    )
    assert [(e.actor, e.result) for e in reversed(entries.items)] == [
        (f"cli:{getpass.getuser()}", AuditResult.FAILED),
        (f"cli:{getpass.getuser()}", AuditResult.OK),
    ]
