"""The audit middleware over a small app, with the in-memory sink (MemoryAudit): which calls
it records, with which result, actor, target and detail."""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
from datetime import UTC, datetime
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from server.access import Principal, Role
from server.access_api import AuditMiddleware, note_audit, require
from server.audit import AuditResult, MemoryAudit
from server.errors import AccessError, ApiError

AT = datetime(2026, 12, 3, tzinfo=UTC)


class FakeTokens:
    """Stands in for ``server.tokens.Tokens``: one known secret per role."""

    def authenticate(self, secret: str) -> Principal:
        role = secret.removeprefix("kf_test_")
        if role not in {r.value for r in Role}:
            raise AccessError("unknown", "token unknown")
        return Principal(name=f"{role}-token", role=Role(role))


class FakeAccess:
    tokens = FakeTokens()


@pytest.fixture
def app_and_audit() -> tuple[TestClient, MemoryAudit]:
    audit = MemoryAudit()
    app = FastAPI()
    app.state.kf_access = FakeAccess()
    app.add_middleware(AuditMiddleware, sink=audit, clock=lambda: AT)

    @app.exception_handler(ApiError)  # as server.api.create_app answers it
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error}, status_code=exc.status, headers=exc.headers)

    operator = Annotated[Principal, Depends(require(Role.OPERATOR))]

    @app.post("/things/{thing}", name="thing.make")
    def make(thing: str, _who: operator) -> dict[str, str]:
        return {"made": thing}

    @app.delete("/things/{thing}", name="thing.drop")
    def drop(request: Request, thing: str, _who: operator) -> dict[str, str]:
        note_audit(request, target=f"thing/{thing}", why="asked")
        return {}

    @app.post("/boom", name="boom", dependencies=[Depends(require(Role.VIEWER))])
    def boom() -> None:
        raise RuntimeError("bug")

    @app.get("/things", dependencies=[Depends(require(Role.VIEWER))])
    def things() -> list[str]:
        return []

    return TestClient(app, raise_server_exceptions=False), audit


def _auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer kf_test_{role}"}


def test_a_done_call_is_recorded_with_actor_role_target_source_and_status(
    app_and_audit: tuple[TestClient, MemoryAudit],
) -> None:
    client, audit = app_and_audit
    assert client.post("/things/t1", headers=_auth("admin")).status_code == 200
    [entry] = audit.entries
    assert (entry.at, entry.actor, entry.action, entry.result) == (
        AT,
        "token:admin-token",
        "thing.make",
        AuditResult.OK,
    )
    assert (entry.target, entry.role, entry.source) == ("t1", "admin", "testclient")
    assert entry.detail == {"status": "200"}


def test_a_handler_names_its_own_target_and_detail(
    app_and_audit: tuple[TestClient, MemoryAudit],
) -> None:
    client, audit = app_and_audit
    client.delete("/things/t2", headers=_auth("operator"))
    [entry] = audit.entries
    assert (entry.target, entry.detail) == ("thing/t2", {"status": "200", "why": "asked"})


def test_denied_calls_are_recorded_anonymous_or_with_the_weak_token(
    app_and_audit: tuple[TestClient, MemoryAudit],
) -> None:
    client, audit = app_and_audit
    assert client.post("/things/t3").status_code == 401
    assert client.post("/things/t3", headers=_auth("nobody")).status_code == 401
    assert client.post("/things/t3", headers=_auth("viewer")).status_code == 403
    assert [(e.actor, e.result, dict(e.detail)) for e in audit.entries] == [
        ("anonymous", AuditResult.DENIED, {"status": "401"}),
        ("anonymous", AuditResult.DENIED, {"status": "401", "reason": "unknown"}),
        ("token:viewer-token", AuditResult.DENIED, {"status": "403"}),
    ]


def test_a_handler_that_crashes_is_recorded_as_failed(
    app_and_audit: tuple[TestClient, MemoryAudit],
) -> None:
    client, audit = app_and_audit
    assert client.post("/boom", headers=_auth("viewer")).status_code == 500
    [entry] = audit.entries
    assert (entry.action, entry.result, entry.detail) == (
        "boom",
        AuditResult.FAILED,
        {"status": "none"},
    )


def test_reads_and_calls_that_reach_no_route_are_not_recorded(
    app_and_audit: tuple[TestClient, MemoryAudit],
) -> None:
    client, audit = app_and_audit
    assert client.get("/things", headers=_auth("viewer")).status_code == 200
    assert client.get("/things").status_code == 401
    assert client.post("/no/such/route").status_code == 404
    assert audit.entries == []
