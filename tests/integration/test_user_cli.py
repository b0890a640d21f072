"""``kioskfleet user create|passwd|disable|list`` on the configured database (SQLite and
PostgreSQL), each change audited with actor ``cli:<os user>``: a user made at the command
line logs in to a server's console on that database; a new password or disabling ends
the user's sessions."""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server.access_store import AccessStore, AuditFilter
from server.audit import AuditResult
from server.config import Settings
from server.console.web import CONSOLE_PREFIX, SESSION_COOKIE
from server.storage import Storage
from tests.integration.conftest import ServerFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a long enough password"  # noqa: S105 - a test user's password


def _user(database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_") or "TEST" in k}
    env["KIOSKFLEET_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "user", *args],
        cwd=ROOT,  # this checkout's code, whatever is installed
        env=env,
        input=stdin,
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


def _login(base_url: str, password: str) -> tuple[int, str | None]:
    """The login's status and the session cookie it set."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        form = client.get(CONSOLE_PREFIX + "/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert token is not None
        client.cookies.set("kf_login", form.cookies["kf_login"])  # Secure: not over http
        answer = client.post(
            CONSOLE_PREFIX + "/login",
            data={"username": "alice", "password": password, "login_token": token.group(1)},
        )
        return answer.status_code, answer.cookies.get(SESSION_COOKIE)


def _page_status(base_url: str, session: str | None) -> int:
    cookies = {} if session is None else {SESSION_COOKIE: session}
    return httpx.get(base_url + CONSOLE_PREFIX, cookies=cookies, timeout=10).status_code


def test_a_user_made_at_the_command_line_logs_in_until_its_password_changes_or_it_is_disabled(
    database_url: str, start_server: ServerFactory
) -> None:
    made = _user(database_url, "create", "alice", "--role", "operator", "--password-stdin",
                 stdin=PASSWORD + "\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert PASSWORD not in made.stdout + made.stderr
    again = _user(database_url, "create", "alice", "--role", "viewer", "--password-stdin",
                  stdin=PASSWORD + "\n")  # fmt: skip
    assert again.returncode == 1
    weak = _user(database_url, "passwd", "alice", "--password-stdin", stdin="short\n")
    assert weak.returncode == 1
    listed = _user(database_url, "list")
    assert listed.returncode == 0
    assert re.search(r"^alice\toperator\tactive\t", listed.stdout, re.MULTILINE)

    server = start_server(database_url=database_url)
    status, first = _login(server.base_url, PASSWORD)
    assert status == 303
    assert _page_status(server.base_url, first) == 200
    assert _user(database_url, "passwd", "alice", "--password-stdin",
                 stdin="another long password\n").returncode == 0  # fmt: skip
    assert _page_status(server.base_url, first) == 303  # ended: back to the login page
    assert _login(server.base_url, PASSWORD)[0] == 401
    status, second = _login(server.base_url, "another long password")
    assert status == 303
    assert _user(database_url, "disable", "alice").returncode == 0
    assert _page_status(server.base_url, second) == 303
    assert _login(server.base_url, "another long password")[0] == 401
    assert "alice\toperator\tdisabled" in _user(database_url, "list").stdout

    actor = f"cli:{getpass.getuser()}"
    cli = [e for e in _audit(database_url) if e[1].startswith("user.")]
    assert cli == [
        (actor, "user.create", "alice", AuditResult.OK),
        (actor, "user.create", "alice", AuditResult.FAILED),
        (actor, "user.passwd", "alice", AuditResult.FAILED),
        (actor, "user.passwd", "alice", AuditResult.OK),
        (actor, "user.disable", "alice", AuditResult.OK),
    ]
