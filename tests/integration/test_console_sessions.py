"""Console behaviour that is the server's, over plain HTTP with the session's cookie on a
running server (real mosquitto, SQLite): a page's automatic refresh does not keep an idle
session alive, and the rollout preview's storage errors answer 503 like every page's."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import cast

import httpx
import pytest
import sqlalchemy as sa

from server.access import Role
from server.console.web import AUTO_REFRESH_QUERY, CONSOLE_PREFIX, SESSION_COOKIE
from server.console_auth import hash_session_secret
from server.errors import StorageError
from server.main import Server
from server.rollout_service import RolloutService
from tests.integration.conftest import ServerFactory
from tests.integration.test_console import _httpx_login, add_user

pytestmark = pytest.mark.integration


def _age_session(server: Server, username: str, seconds: float) -> datetime:
    """Move the session's last use ``seconds`` into the past (the session's clock moved
    on); returns that time."""
    past = datetime.now(UTC) - timedelta(seconds=seconds)
    table = sa.table("console_session", sa.column("last_seen_at"), sa.column("username"))
    with server.storage.begin("age the session") as conn:
        conn.execute(sa.update(table).where(table.c.username == username).values(last_seen_at=past))
    return past


def _last_seen(server: Server, client: httpx.Client) -> datetime:
    (secret,) = {c.value for c in client.cookies.jar if c.name == SESSION_COOKIE}
    assert secret is not None
    found = server.console_store.session(hash_session_secret(secret))
    assert found is not None
    seen = found[0].last_seen_at
    return seen if seen.tzinfo else seen.replace(tzinfo=UTC)


def test_a_pages_automatic_refresh_is_served_but_does_not_keep_an_idle_session_alive(
    start_server: ServerFactory,
) -> None:
    server = start_server(console_session_idle_s=600)
    add_user(server, "ida", Role.VIEWER)
    client = _httpx_login(server, "ida")
    auto = f"{CONSOLE_PREFIX}/rollouts?{AUTO_REFRESH_QUERY}"
    try:
        aged = _age_session(server, "ida", 120)  # used 2 minutes ago: more than 30 s
        for _ in range(3):
            refreshed = client.get(auto)
            assert refreshed.status_code == 200  # served: the session is still good
        assert _last_seen(server, client) - aged < timedelta(seconds=1)  # not moved
        # the marker keeps a request from counting, it never makes one count: a POST, or a
        # GET without it, is use
        assert client.get(f"{CONSOLE_PREFIX}/rollouts").status_code == 200
        assert _last_seen(server, client) - aged > timedelta(seconds=100)
        _age_session(server, "ida", 601)  # idle longer than the limit
        ended = client.get(auto)
        assert ended.status_code == 303
        assert ended.headers["location"].startswith(f"{CONSOLE_PREFIX}/login?next=")
    finally:
        client.close()


class _UnreadableRollouts:
    """A rollout service whose selection cannot read the database."""

    def matching(self, selector: object, target: str | None = None) -> tuple[str, ...]:
        raise StorageError("read terminal tags", "connection refused")


def test_a_storage_error_while_previewing_a_rollout_answers_503_not_500(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    add_user(server, "olga", Role.OPERATOR)
    client = _httpx_login(server, "olga")
    try:
        form = client.get(f"{CONSOLE_PREFIX}/rollouts/new")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        # A hall no other test's terminal is in: the session broker keeps their retained states.
        fields = {"csrf_token": token.group(1), "hall": "hall-preview-none", "target": ""}
        fine = client.post(f"{CONSOLE_PREFIX}/rollouts/preview", data=fields)
        assert fine.status_code == 200
        assert re.search(r'id="preview-count">0<', fine.text)
        server.rollouts = cast(RolloutService, _UnreadableRollouts())
        failed = client.post(f"{CONSOLE_PREFIX}/rollouts/preview", data=fields)
        assert failed.status_code == 503
        assert "<h1>Error</h1>" in failed.text  # the console's error page, not a bare 500
    finally:
        client.close()
