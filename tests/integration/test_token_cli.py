"""``kioskfleet token create|list|revoke`` on the configured database (SQLite and
PostgreSQL), each change audited with actor ``cli:<os user>``; a token made at the command
line works against a server on that database, and stops working once revoked."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server.access_store import AccessStore, AuditFilter
from server.audit import AuditResult
from server.config import Settings
from server.storage import Storage
from tests.integration.conftest import ServerFactory, bearer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _kioskfleet(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_") or "TEST" in k}
    env["KIOSKFLEET_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "token", *args],
        cwd=ROOT,  # this checkout's code, whatever is installed
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _audit(database_url: str) -> list[tuple[str, str, str | None, AuditResult]]:
    storage = Storage(Settings(database_url=database_url).database_url)
    storage.open()
    try:
        page = AccessStore(storage).audit(AuditFilter(), limit=100)
    finally:
        storage.close()
    return [(e.actor, e.action, e.target, e.result) for e in reversed(page.items)]


def test_create_prints_only_the_secret_list_hides_it_revoke_marks_it_all_audited(
    database_url: str,
) -> None:
    created = _kioskfleet(
        database_url, "create", "--role", "operator", "--name", "ops", "--expires", "30d"
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("kf_")
    assert "\n" not in secret
    assert "shown this once" in created.stderr

    listed = _kioskfleet(database_url, "list")
    assert listed.returncode == 0, listed.stderr
    [row] = [line.split("\t") for line in listed.stdout.splitlines()[1:]]
    assert row[:4] == ["ops", "operator", "-", "active"]
    assert secret not in listed.stdout

    assert _kioskfleet(database_url, "revoke", "ops").returncode == 0
    [row] = [line.split("\t") for line in _kioskfleet(database_url, "list").stdout.splitlines()[1:]]
    assert row[3] == "revoked"

    actor = f"cli:{getpass.getuser()}"
    assert _audit(database_url) == [
        (actor, "token.create", "ops", AuditResult.OK),
        (actor, "token.revoke", "ops", AuditResult.OK),
    ]


def test_refused_requests_exit_1_with_a_clear_message_and_are_audited_as_failed(
    database_url: str,
) -> None:
    vendorless = _kioskfleet(database_url, "create", "--role", "vendor", "--name", "acme")
    assert vendorless.returncode == 1
    assert "needs --vendor" in vendorless.stderr
    assert vendorless.stdout == ""
    bad_expiry = _kioskfleet(
        database_url, "create", "--role", "viewer", "--name", "v", "--expires", "soon"
    )
    assert bad_expiry.returncode == 1
    assert "expiry" in bad_expiry.stderr
    missing = _kioskfleet(database_url, "revoke", "nobody")
    assert missing.returncode == 1
    assert "no token named 'nobody'" in missing.stderr
    assert [(a, t, r) for _actor, a, t, r in _audit(database_url)] == [
        ("token.create", "acme", AuditResult.FAILED),
        ("token.create", "v", AuditResult.FAILED),
        ("token.revoke", "nobody", AuditResult.FAILED),
    ]


def test_a_token_made_at_the_command_line_works_on_the_server_until_revoked(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path}/cli.db"
    created = _kioskfleet(database_url, "create", "--role", "viewer", "--name", "grafana")
    secret = created.stdout.strip()
    server = start_server(database_url=database_url)
    url = server.base_url + "/api/v1/halls"
    assert httpx.get(url, headers=bearer(secret), timeout=5).status_code == 200
    assert _kioskfleet(database_url, "revoke", "grafana").returncode == 0
    assert httpx.get(url, headers=bearer(secret), timeout=5).status_code == 401
