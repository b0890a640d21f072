"""API access over real HTTP on a running server (real mosquitto, SQLite): every route
declares a role, tokens are created, used and revoked through the API, every state-changing
call (denied ones too) lands in the audit log, and the first start prints a bootstrap token."""

from __future__ import annotations

import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from kioskfleet.local_broker import LocalBroker
from server.access import Role, allows
from server.access_api import OPEN_PATHS, declared_role
from server.access_store import AuditFilter
from server.console.web import CONSOLE_OPEN_PATHS, CONSOLE_PREFIX
from server.errors import ConfigError
from server.est import EST_PREFIX
from server.main import Server
from server.tokens import Tokens
from tests.integration.conftest import (
    ServerFactory,
    TerminalFactory,
    admin_token,
    bearer,
    periph,
    server_settings,
    token,
    unique,
    wait_until,
)
from tests.support.every_part import start_with_every_part

pytestmark = pytest.mark.integration


def _call(
    server: Server, method: str, path: str, secret: str | None = None, verify: Any = True
) -> httpx.Response:
    headers = bearer(secret) if secret is not None else {}
    body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
    return httpx.request(
        method, server.base_url + path, headers=headers, json=body, timeout=5, verify=verify
    )


def _audit(server: Server, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(
        server.base_url + "/api/v1/audit",
        params=params,
        headers=bearer(admin_token(server)),
        timeout=5,
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_every_route_outside_the_open_list_declares_a_role_and_refuses_missing_and_weak_tokens(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    # A new route without require(...) fails here: that is the point of this test. The server
    # has every optional part on (device CA, registry, EST, HTTPS), so that all routes exist.
    server, verify = start_with_every_part(start_server, tmp_path / "ca")
    secrets = {role: token(server, role) for role in Role}
    served = httpx.get(server.base_url + "/openapi.json", timeout=5, verify=verify).json()
    walked = {r.path for r in server.app.routes if isinstance(r, Route)}
    assert set(served["paths"]) <= walked  # no route hides from this walk (an included router)
    assert any(p.startswith("/api/v1/registry/") for p in walked)
    checked = 0
    for route in server.app.routes:
        if not isinstance(route, Route) or route.path in OPEN_PATHS:
            continue
        if route.path.startswith(CONSOLE_PREFIX):
            # Sessions, not tokens: tests/integration/test_console.py walks these routes
            # with logged-in users; here only that each declares its role.
            assert route.path in CONSOLE_OPEN_PATHS or declared_role(route) is not None, route
            continue
        if route.path.startswith(EST_PREFIX + "/"):
            # EST's credential is the request itself (pre-authorised key, token, client
            # certificate): tests/integration/test_est.py proves each refusal.
            continue
        role = declared_role(route)
        assert role is not None, f"{route.path} declares no role (use server.access_api.require)"
        path = re.sub(r"\{[^}]+\}", "nope", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            anonymous = _call(server, method, path, verify=verify)
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            for granted, secret in secrets.items():
                status = _call(server, method, path, secret, verify).status_code
                if allows(granted, role):
                    assert status not in (401, 403), (method, path, granted)
                else:
                    assert status == 403, (method, path, granted, status)
            checked += 1
    assert checked >= 13  # fleet reads and changes, /metrics, tokens, audit log, registry


def test_probes_and_the_api_description_answer_without_a_token(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    assert httpx.get(server.base_url + "/healthz", timeout=5).status_code == 200
    assert httpx.get(server.base_url + "/readyz", timeout=5).status_code == 200
    assert httpx.get(server.base_url + "/openapi.json", timeout=5).status_code == 200


def test_metrics_need_a_viewer_token_unless_metrics_require_token_is_off(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    guarded = start_server()
    assert httpx.get(guarded.base_url + "/metrics", timeout=5).status_code == 401
    viewer = token(guarded, Role.VIEWER)
    response = httpx.get(guarded.base_url + "/metrics", headers=bearer(viewer), timeout=5)
    assert response.status_code == 200
    assert "kioskfleet_build_info" in response.text
    vendor = token(guarded, Role.VENDOR)
    assert _call(guarded, "GET", "/metrics", vendor).status_code == 403

    open_metrics = start_server(
        database_url=f"sqlite:///{tmp_path}/open.db", metrics_require_token=False
    )
    assert httpx.get(open_metrics.base_url + "/metrics", timeout=5).status_code == 200
    assert declared_role(_route(open_metrics, "/metrics")) is None


def _route(server: Server, path: str) -> Route:
    return next(r for r in server.app.routes if isinstance(r, Route) and r.path == path)


def test_unknown_malformed_expired_and_revoked_tokens_get_401_with_a_bearer_challenge(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    past = datetime.now(UTC) - timedelta(hours=2)
    _record, expired = Tokens(server.access_store, clock=lambda: past).create(
        name="expired", role=Role.ADMIN, created_by="test", expires_at=past + timedelta(hours=1)
    )
    revoked = token(server, Role.ADMIN, name="leaked")
    server.tokens.revoke("leaked")
    cases = {
        "unknown": "kf_" + "x" * 43,
        "malformed": "not-a-token",
        "expired": expired,
        "revoked": revoked,
    }
    for reason, secret in cases.items():
        response = _call(server, "GET", "/api/v1/terminals", secret)
        assert response.status_code == 401, reason
        assert response.headers["www-authenticate"] == 'Bearer realm="kioskfleet"'
        assert response.json()["error"] == "unauthenticated"
        assert reason in response.json()["message"]


def test_tokens_are_created_used_listed_and_revoked_through_the_api_each_change_audited(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    admin = admin_token(server)
    created = httpx.post(
        server.base_url + "/api/v1/tokens",
        json={"name": "grafana", "role": "viewer", "expires": "30d"},
        headers=bearer(admin),
        timeout=5,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("kf_")
    assert (body["name"], body["role"], body["vendor"]) == ("grafana", "viewer", None)
    assert body["expires_at"] is not None
    assert body["created_by"].startswith("token:test-admin-")
    assert _call(server, "GET", "/api/v1/halls", secret).status_code == 200
    assert _call(server, "GET", "/api/v1/tokens", secret).status_code == 403

    listed = httpx.get(server.base_url + "/api/v1/tokens", headers=bearer(admin), timeout=5)
    [grafana] = [t for t in listed.json()["items"] if t["name"] == "grafana"]
    assert "secret" not in grafana
    assert "secret_hash" not in grafana
    assert secret not in listed.text
    assert grafana["last_used_at"] is not None  # it was just used

    revoked = httpx.delete(
        server.base_url + "/api/v1/tokens/grafana", headers=bearer(admin), timeout=5
    )
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert _call(server, "GET", "/api/v1/halls", secret).status_code == 401

    admin_actor = body["created_by"]
    [create] = _audit(server, action="token.create", target="grafana")
    assert (create["actor"], create["result"], create["role"]) == (admin_actor, "ok", "admin")
    assert create["source"] == "127.0.0.1"
    assert create["detail"] == {"status": "201", "role": "viewer"}
    [revoke] = _audit(server, action="token.revoke", target="grafana")
    assert (revoke["actor"], revoke["result"]) == (admin_actor, "ok")
    assert secret not in str(_audit(server))


def test_refused_token_requests_are_answered_clearly_and_audited_as_failed(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    headers = bearer(admin_token(server))
    url = server.base_url + "/api/v1/tokens"
    vendorless = httpx.post(url, json={"name": "acme", "role": "vendor"}, headers=headers)
    assert vendorless.status_code == 422
    assert "vendor" in vendorless.json()["message"]
    assert (
        httpx.post(url, json={"name": "ops", "role": "operator"}, headers=headers).status_code
        == 201
    )
    again = httpx.post(url, json={"name": "ops", "role": "operator"}, headers=headers)
    assert again.status_code == 409
    past = httpx.post(
        url, json={"name": "old", "role": "viewer", "expires": "2001-01-01"}, headers=headers
    )
    assert past.status_code == 422
    assert past.json()["error"] == "invalid_expiry"
    assert httpx.delete(url + "/nobody", headers=headers).status_code == 404

    failed = {
        (e["action"], e["target"], e["detail"]["status"]) for e in _audit(server, result="failed")
    }
    assert failed == {
        ("token.create", "acme", "422"),
        ("token.create", "ops", "409"),
        ("token.create", "old", "422"),
        ("token.revoke", "nobody", "404"),
    }


def test_denied_state_changing_calls_are_audited_with_who_tried_and_why(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    viewer = token(server, Role.VIEWER)
    assert _call(server, "POST", "/api/v1/tokens").status_code == 401
    assert _call(server, "POST", "/api/v1/tokens", "kf_" + "y" * 43).status_code == 401
    assert _call(server, "DELETE", "/api/v1/tokens/bootstrap", viewer).status_code == 403
    assert _call(server, "GET", "/api/v1/tokens").status_code == 401  # a read: not audited

    denied = _audit(server, result="denied")
    assert [(e["actor"], e["action"], e["target"], e["detail"]) for e in reversed(denied)] == [
        ("anonymous", "token.create", None, {"status": "401"}),
        ("anonymous", "token.create", None, {"status": "401", "reason": "unknown"}),
        (denied[0]["actor"], "token.revoke", "bootstrap", {"status": "403"}),
    ]
    assert str(denied[0]["actor"]).startswith("token:test-viewer-")
    assert denied[0]["role"] == "viewer"
    assert all(e["source"] == "127.0.0.1" for e in denied)


def test_the_audit_log_filters_by_field_and_time_and_pages_newest_first(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    headers = bearer(admin_token(server))
    before = datetime.now(UTC)
    for n in range(5):
        httpx.post(
            server.base_url + "/api/v1/tokens",
            json={"name": f"t{n}", "role": "viewer"},
            headers=headers,
            timeout=5,
        )
    after = datetime.now(UTC)
    pages: list[list[object]] = []
    cursor: str | None = None
    while True:
        params = {"action": "token.create", "limit": "2", **({"cursor": cursor} if cursor else {})}
        body = httpx.get(server.base_url + "/api/v1/audit", params=params, headers=headers).json()
        pages.append([e["target"] for e in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [["t4", "t3"], ["t2", "t1"], ["t0"]]
    assert len(_audit(server, since=before.isoformat(), until=after.isoformat())) == 5
    assert _audit(server, until=before.isoformat()) == []
    assert [e["target"] for e in _audit(server, target="t2")] == ["t2"]
    bad = httpx.get(server.base_url + "/api/v1/audit", params={"cursor": "zzz"}, headers=headers)
    assert bad.status_code == 422


def test_no_route_edits_or_deletes_an_audit_entry(start_server: ServerFactory) -> None:
    server = start_server()
    audit_routes = [r for r in server.app.routes if isinstance(r, Route) and "audit" in r.path]
    assert [(r.path, sorted(r.methods or ())) for r in audit_routes] == [
        ("/api/v1/audit", ["GET"]),
        ("/console/audit", ["GET"]),  # the console's page reads it too (docs/console.md)
    ]
    admin = admin_token(server)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert _call(server, method, "/api/v1/audit", admin).status_code == 405


def test_a_viewer_sees_a_terminal_without_its_delivery_counters_an_operator_with_them(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server()
    t = terminals()
    t.report([periph("printer", "receipt_printer")])
    path = f"/api/v1/terminals/{t.id}"
    operator = token(server, Role.OPERATOR)
    body = wait_until(
        lambda: (r := _call(server, "GET", path, operator)).status_code == 200 and r.json(),
        what="the terminal to appear",
    )
    assert body["delivery"]["last_seq"] == t.seq
    viewer_body = _call(server, "GET", path, token(server, Role.VIEWER)).json()
    assert viewer_body["delivery"] is None
    assert viewer_body["id"] == t.id


def test_the_first_start_prints_a_bootstrap_admin_token_once_and_writes_it_0600(
    broker: LocalBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "secrets" / "admin.token"
    settings = server_settings(
        broker.url, f"sqlite:///{tmp_path}/fresh.db", bootstrap_token_file=token_file
    )
    first = Server(settings, registry=CollectorRegistry())
    try:
        first.start()
        printed = capsys.readouterr().err
        secret = token_file.read_text().strip()
        assert secret in printed
        assert secret.startswith("kf_")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert _call(first, "GET", "/api/v1/tokens", secret).status_code == 200
        [record] = first.tokens.every()
        assert (record.name, record.role, record.created_by) == ("bootstrap", Role.ADMIN, "system")
        assert secret not in record.secret_hash
        [entry] = first.access_store.audit(AuditFilter(), limit=10).items
        assert (entry.actor, entry.action, entry.target) == ("system", "token.create", "bootstrap")
    finally:
        first.stop()
    token_file.unlink()
    second = Server(
        settings.model_copy(update={"mqtt_client_id": unique("kf")}), registry=CollectorRegistry()
    )
    try:
        second.start()
        assert capsys.readouterr().err.count("kf_") == 0
        assert not token_file.exists()
        assert len(second.tokens.every()) == 1
    finally:
        second.stop()


def test_a_bootstrap_token_file_that_cannot_be_written_fails_the_start_and_leaves_no_token(
    broker: LocalBroker, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings = server_settings(
        broker.url, f"sqlite:///{tmp_path}/fresh.db", bootstrap_token_file=blocker / "admin.token"
    )
    server = Server(settings, registry=CollectorRegistry())
    try:
        with pytest.raises(ConfigError, match="cannot write the token file"):
            server.start()
        assert server.tokens.every() == []  # the next start bootstraps afresh
    finally:
        server.stop()


def test_refused_attempts_beyond_the_audit_budget_are_counted_not_stored(
    start_server: ServerFactory,
) -> None:
    server = start_server(audit_denied_burst=5, audit_denied_rate_per_s=0.001)
    for _ in range(40):
        assert _call(server, "POST", "/api/v1/tokens").status_code == 401
    denied = _audit(server, action="token.create", result="denied")
    assert len(denied) == 5  # the budget of 127.0.0.1
    suppressed = server.registry.get_sample_value("kioskfleet_audit_denied_suppressed_total")
    assert suppressed == 35
    made = _call(server, "POST", "/api/v1/tokens", admin_token(server))  # with credentials
    assert made.status_code == 422  # an empty body: refused, but audited as failed
    assert _audit(server, action="token.create", result="failed")
