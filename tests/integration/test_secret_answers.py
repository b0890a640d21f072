"""Answers that carry a secret once are kept by no cache: every API route whose response
model has a ``secret_field`` answers with ``SecretJSONResponse`` (``Cache-Control:
no-store``), and each of them, called over real HTTPS on a server with every part on,
sends the header with the secret (real mosquitto, SQLite)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from server.access import Role
from server.main import Server
from server.secret_answers import NO_STORE, SecretJSONResponse, is_secret_field
from tests.integration.conftest import ServerFactory, admin_token, bearer, token
from tests.support.every_part import start_with_every_part

pytestmark = pytest.mark.integration

_SECRET_NAMES = {"secret", "token", "password", "private_key", "key"}
"""Field names that say "secret": a response field so named must be marked."""


def _secret_routes(server: Server) -> dict[str, APIRoute]:
    """The routes whose response model holds a marked secret field, by route name. Fails for
    a field named like a secret but not marked, or a secret answered without no-store."""
    found: dict[str, APIRoute] = {}
    for route in server.app.routes:
        model = getattr(route, "response_model", None)
        if not isinstance(route, APIRoute) or not (
            isinstance(model, type) and issubclass(model, BaseModel)
        ):
            continue
        marked = {name for name, f in model.model_fields.items() if is_secret_field(f)}
        assert set(model.model_fields) & _SECRET_NAMES <= marked, (route.path, model)
        if marked:
            assert route.response_class is SecretJSONResponse, route.path
            found[route.name] = route
    return found


def test_every_answer_with_a_secret_tells_caches_not_to_store_it(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    server, tls = start_with_every_part(start_server, tmp_path / "ca")
    assert set(_secret_routes(server)) == {"token.create", "terminal.token"}
    operator = bearer(token(server, Role.OPERATOR))
    place = {"hall": "Hall A", "region": "North", "model": "KX-200"}
    calls = {
        "token.create": ("/api/v1/tokens", {"name": "cached", "role": "viewer"},
                         bearer(admin_token(server)), "secret"),
        "terminal.token": ("/api/v1/registry/T-NOSTORE/enrollment-tokens",
                           {**place, "ttl_s": 600}, operator, "token"),
    }  # fmt: skip
    with httpx.Client(base_url=server.base_url, verify=tls) as client:
        for path, body, headers, field in calls.values():
            answer = client.post(path, json=body, headers=headers)
            assert answer.status_code == 201, answer.text
            assert answer.json()[field]  # the secret is in this answer...
            for header, value in NO_STORE.items():  # ... which no cache may keep
                assert answer.headers[header] == value
        listed = client.get("/api/v1/tokens", headers=bearer(admin_token(server)))
        assert listed.status_code == 200
        assert "secret" not in listed.text  # the list carries none, so it may be cached
        assert "cache-control" not in listed.headers
