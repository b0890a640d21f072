"""The terminal registry through the API: pre-authorise, enrollment token, revoke, read; an
operator's changes, refused to a viewer, audited with the token's name."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from server.access import Role
from server.access_store import AuditFilter
from server.audit import AuditResult
from server.device_ca import generate_key, public_key_fingerprint
from server.main import Server
from tests.integration.conftest import ServerFactory, api, bearer, token
from tests.support.device_identity import csr_for, make_ca, public_pem

pytestmark = pytest.mark.integration

PLACE = {"hall": "Hall A", "region": "North", "model": "KX-200"}


@pytest.fixture
def server(start_server: ServerFactory, tmp_path: Path) -> Server:
    return start_server(ca_dir=make_ca(tmp_path / "ca").directory)


def _url(server: Server, path: str) -> str:
    return f"{server.base_url}/api/v1/registry/{path}"


def test_an_operator_preauthorizes_a_key_that_then_enrolls_and_revokes_it(server: Server) -> None:
    operator = bearer(token(server, Role.OPERATOR, name="ops-reg"))
    viewer = bearer(token(server, Role.VIEWER))
    key = generate_key()
    body = {**PLACE, "public_key": public_pem(key).decode()}

    assert httpx.put(_url(server, "T-API"), json=body, headers=viewer).status_code == 403
    done = httpx.put(_url(server, "T-API"), json=body, headers=operator)

    assert done.status_code == 200, done.text
    assert done.json()["public_key_fingerprint"] == public_key_fingerprint(key.public_key())
    assert api(server, "/api/v1/registry/T-API").json()["status"] == "preauthorized"
    registry = server.terminal_registry
    assert registry is not None
    cert = registry.enroll(csr_for(key, "T-API"))
    record = api(server, "/api/v1/registry/T-API").json()
    assert (record["status"], record["hall"]) == ("active", "Hall A")

    revoked = httpx.post(_url(server, "T-API/revoke"), headers=operator)

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_serials"] == [f"{cert.serial_number:x}"]
    assert api(server, "/api/v1/registry/T-API").json()["status"] == "revoked"
    assert not registry.is_active("T-API")
    actions = {
        (e.action, e.result)
        for e in server.access_store.audit(AuditFilter(actor="token:ops-reg"), limit=50).items
    }
    assert {("terminal.preauthorize", AuditResult.OK), ("terminal.revoke", AuditResult.OK)} <= (
        actions
    )


def test_an_enrollment_token_from_the_api_enrolls_once(server: Server) -> None:
    operator = bearer(token(server, Role.OPERATOR))
    issued = httpx.post(
        _url(server, "T-TOK/enrollment-tokens"), json={**PLACE, "ttl_s": 3600}, headers=operator
    )
    assert issued.status_code == 201, issued.text
    secret = issued.json()["token"]
    registry = server.terminal_registry
    assert registry is not None
    key = generate_key()
    registry.enroll(csr_for(key, "T-TOK"), username="T-TOK", token=secret)
    assert registry.is_active("T-TOK")
    assert secret not in str(
        [e.detail for e in server.access_store.audit(AuditFilter(), limit=100).items]
    )  # never in the audit log


def test_refusals_carry_the_registrys_reason_and_status(server: Server) -> None:
    operator = bearer(token(server, Role.OPERATOR))
    bad_key = httpx.put(
        _url(server, "T-BAD"), json={**PLACE, "public_key": "not a key"}, headers=operator
    )
    assert (bad_key.status_code, bad_key.json()["error"]) == (400, "bad_key")
    unknown = httpx.post(_url(server, "T-NOBODY/revoke"), headers=operator)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_terminal")
    assert api(server, "/api/v1/registry/T-NOBODY").status_code == 404
    assert httpx.get(_url(server, "T-NOBODY")).status_code == 401  # no token
