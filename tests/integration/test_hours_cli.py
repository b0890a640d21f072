"""``kioskfleet hall hours set|show`` on the configured database (SQLite and PostgreSQL):
the hours set at the command line are the ones the API answers, each change audited with
actor ``cli:<os user>``, a bad file refused with its reason and audited as failed."""

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
from server.config import Settings
from server.storage import Storage
from tests.integration.conftest import ServerFactory, bearer, token

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HOURS = {"timezone": "Europe/Vienna", "weekly": {"thu": [{"start": "09:00", "end": "18:00"}]}}


def _kioskfleet(database_url: str, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_") or "TEST" in k}
    env["KIOSKFLEET_DATABASE_URL"] = database_url
    env.update({f"KIOSKFLEET_{name.upper()}": value for name, value in settings.items()})
    return subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "hall", "hours", *args],
        cwd=ROOT,  # this checkout's code, whatever is installed
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _audit(database_url: str) -> list[tuple[str, str, str | None, AuditResult, dict[str, str]]]:
    storage = Storage(Settings(database_url=database_url).database_url)
    storage.open()
    try:
        page = AccessStore(storage).audit(AuditFilter(action="hall.hours.set"), limit=10)
    finally:
        storage.close()
    return [(e.actor, e.action, e.target, e.result, dict(e.detail)) for e in reversed(page.items)]


def test_hours_set_at_the_command_line_are_shown_and_served_by_the_api_and_audited(
    database_url: str, tmp_path: Path, start_server: ServerFactory
) -> None:
    file = tmp_path / "hours.json"
    file.write_text(json.dumps(HOURS))

    done = _kioskfleet(database_url, "set", "Hall 7", "--file", str(file))

    assert done.returncode == 0, done.stderr
    shown = _kioskfleet(database_url, "show", "Hall 7")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["hours"] == {**HOURS, "holidays": []}
    assert document["updated_by"] == f"cli:{getpass.getuser()}"
    server = start_server(database_url=database_url)
    served = httpx.get(
        f"{server.base_url}/api/v1/halls/Hall%207/open",
        params={"at": "2026-12-03T10:00:00+01:00"},  # a Thursday
        headers=bearer(token(server, Role.VIEWER)),
        timeout=5,
    )
    assert served.json()["open"] is True
    assert _audit(database_url) == [
        (
            f"cli:{getpass.getuser()}",
            "hall.hours.set",
            "Hall 7",
            AuditResult.OK,
            {"timezone": "Europe/Vienna"},
        )
    ]


def test_a_bad_file_is_refused_with_its_reason_audited_and_nothing_is_stored(
    database_url: str, tmp_path: Path
) -> None:
    file = tmp_path / "hours.json"
    file.write_text(
        json.dumps({"timezone": "UTC", "weekly": {"fri": [{"start": "22:00", "end": "02:00"}]}})
    )

    refused = _kioskfleet(database_url, "set", "H", "--file", str(file))

    assert refused.returncode == 1
    assert "never crosses midnight" in refused.stderr
    assert "weekly.fri.0" in refused.stderr
    missing = _kioskfleet(database_url, "show", "H")
    assert missing.returncode == 1
    assert "no opening hours" in missing.stderr
    not_json = tmp_path / "junk.json"
    not_json.write_bytes(b"\xff{")
    assert _kioskfleet(database_url, "set", "H", "--file", str(not_json)).returncode == 1
    gone = _kioskfleet(database_url, "set", "H", "--file", str(tmp_path / "absent.json"))
    assert gone.returncode == 1
    assert [(r[2], r[3], r[4]) for r in _audit(database_url)] == [
        ("H", AuditResult.FAILED, {"why": "invalid_hours"})
    ] * 3


def test_hours_for_one_hall_past_the_bound_are_refused_and_audited_as_failed(
    database_url: str, tmp_path: Path
) -> None:
    file = tmp_path / "hours.json"
    file.write_text(json.dumps(HOURS))
    bound = {"opening_hours_max_halls": "1"}

    assert _kioskfleet(database_url, "set", "H1", "--file", str(file), **bound).returncode == 0
    refused = _kioskfleet(database_url, "set", "H2", "--file", str(file), **bound)

    assert refused.returncode == 1
    assert "1 halls already have opening hours" in refused.stderr
    assert _kioskfleet(database_url, "show", "H2").returncode == 1
    assert _kioskfleet(database_url, "set", "H1", "--file", str(file), **bound).returncode == 0
    assert [(r[2], r[3], r[4].get("why")) for r in _audit(database_url)] == [
        ("H1", AuditResult.OK, None),
        ("H2", AuditResult.FAILED, "too_many_halls"),
        ("H1", AuditResult.OK, None),
    ]
