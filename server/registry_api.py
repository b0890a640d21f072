"""The terminal registry over the API: what ``kioskfleet terminal preauthorize|token|revoke`` do
at the command line, for an operator's tools and the coming console.

- ``PUT /api/v1/registry/{id}`` pre-authorises the terminal's public key with its hall,
  region and model (again: moves it, replaces the key);
- ``POST /api/v1/registry/{id}/enrollment-tokens`` issues a one-time enrollment token
  (answered once, ``Cache-Control: no-store``, stored only as its hash);
- ``POST /api/v1/registry/{id}/revoke`` revokes its certificates and rewrites the CRL;
- ``PUT /api/v1/registry/{id}/tags`` replaces its tags (what a rollout's ``tags`` selector
  matches);
- ``GET /api/v1/registry/{id}`` its registry record.

The changes need an operator token and are audited twice: by the API's middleware (who,
from where, the HTTP status) and by the registry (what it did, or why it refused). A
decommission (``server.api``'s route, ``Server.decommission``) is audited once, by the
middleware only.
Refusals answer the registry's reason and status (``server.terminal_registry.REFUSALS``).
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from server.access import Principal, Role
from server.access_api import require
from server.errors import ApiError, EnrollmentRefusedError, StorageError
from server.secret_answers import SecretJSONResponse, secret_field
from server.terminal_registry import MAX_TAGS, TerminalRegistry

__all__ = ["registry_router"]

_ID = Annotated[str, Path(max_length=64)]
_TEXT = Field(min_length=1, max_length=64)


class PreauthorizeBody(BaseModel):
    hall: str = _TEXT
    region: str = _TEXT
    model: str = _TEXT
    public_key: str = Field(
        min_length=1, max_length=4096, description="the terminal's EC P-256 public key, PEM"
    )


class TokenBody(BaseModel):
    hall: str = _TEXT
    region: str = _TEXT
    model: str = _TEXT
    ttl_s: int = Field(default=86400, ge=60, le=30 * 86400, description="lifetime, seconds")


class TagsBody(BaseModel):
    tags: list[str] = Field(
        max_length=MAX_TAGS,
        description="the terminal's whole set of tags (replaces the old): 1-32 letters, "
        "digits, '.', '_' or '-' each",
    )


class TagsPublic(BaseModel):
    terminal_id: str
    tags: list[str] = Field(description="sorted")


class PreauthorizedPublic(BaseModel):
    terminal_id: str
    public_key_fingerprint: str = Field(description="SHA-256 of the key's SubjectPublicKeyInfo")


class EnrollmentTokenPublic(BaseModel):
    terminal_id: str
    token: str = secret_field("shown this once; HTTP Basic password for simpleenroll")
    ttl_s: int


class RevokedPublic(BaseModel):
    terminal_id: str
    revoked_serials: list[str] = Field(description="hex serials put on the CRL now")


class RegisteredPublic(BaseModel):
    terminal_id: str
    hall: str
    region: str
    model: str
    status: str = Field(description="preauthorized, active, revoked or decommissioned")
    public_key_fingerprint: str | None
    enrolled_at: datetime | None
    tags: list[str] = Field(description="the operators' tags, sorted")


@contextmanager
def _answered() -> Iterator[None]:
    """The registry's refusals and storage errors as API answers."""
    try:
        yield
    except EnrollmentRefusedError as exc:
        raise ApiError(exc.status, exc.reason, exc.message) from None
    except StorageError as exc:
        raise ApiError(503, "database_unavailable", str(exc)) from None


def registry_router(registry: TerminalRegistry) -> APIRouter:
    """The routes above over ``registry``."""
    router = APIRouter(prefix="/api/v1/registry", tags=["registry"])
    operator = Annotated[Principal, Depends(require(Role.OPERATOR))]

    def source(request: Request) -> str | None:
        return request.client.host if request.client else None

    @router.put(
        "/{terminal_id}",
        response_model=PreauthorizedPublic,
        name="terminal.preauthorize",
        summary="Pre-authorise a terminal's public key with its hall, region and model",
    )
    def preauthorize(
        terminal_id: _ID, body: PreauthorizeBody, who: operator, request: Request
    ) -> PreauthorizedPublic:
        with _answered():
            fingerprint = registry.preauthorize(
                terminal_id,
                body.hall,
                body.region,
                body.model,
                body.public_key.encode("ascii", errors="replace"),
                actor=who.actor,
                source=source(request),
            )
        return PreauthorizedPublic(terminal_id=terminal_id, public_key_fingerprint=fingerprint)

    @router.post(
        "/{terminal_id}/enrollment-tokens",
        response_model=EnrollmentTokenPublic,
        response_class=SecretJSONResponse,
        status_code=201,
        name="terminal.token",
        summary="A one-time enrollment token for the terminal (answered once)",
    )
    def issue_token(
        terminal_id: _ID, body: TokenBody, who: operator, request: Request
    ) -> EnrollmentTokenPublic:
        with _answered():
            token = registry.issue_token(
                terminal_id,
                body.hall,
                body.region,
                body.model,
                timedelta(seconds=body.ttl_s),
                actor=who.actor,
                source=source(request),
            )
        return EnrollmentTokenPublic(terminal_id=terminal_id, token=token, ttl_s=body.ttl_s)

    @router.post(
        "/{terminal_id}/revoke",
        response_model=RevokedPublic,
        name="terminal.revoke",
        summary="Revoke the terminal's certificates, refuse it from now on, rewrite the CRL",
    )
    def revoke(terminal_id: _ID, who: operator, request: Request) -> RevokedPublic:
        with _answered():
            serials = registry.revoke(terminal_id, actor=who.actor, source=source(request))
        return RevokedPublic(terminal_id=terminal_id, revoked_serials=[f"{s:x}" for s in serials])

    @router.put(
        "/{terminal_id}/tags",
        response_model=TagsPublic,
        name="terminal.tag",
        summary="Replace the terminal's tags (matched by rollout selectors)",
    )
    def tag(terminal_id: _ID, body: TagsBody, who: operator, request: Request) -> TagsPublic:
        with _answered():
            tags = registry.set_tags(
                terminal_id, body.tags, actor=who.actor, source=source(request)
            )
        return TagsPublic(terminal_id=terminal_id, tags=list(tags))

    @router.get(
        "/{terminal_id}",
        response_model=RegisteredPublic,
        dependencies=[Depends(require(Role.VIEWER))],
        summary="The terminal's registry record",
    )
    def get(terminal_id: _ID) -> RegisteredPublic:
        with _answered():
            found = registry.get(terminal_id)
        if found is None:
            raise ApiError(404, "not_found", f"{terminal_id!r} is not in the registry")
        return RegisteredPublic(
            terminal_id=found.terminal_id,
            hall=found.placement.hall,
            region=found.placement.region,
            model=found.placement.model,
            status=found.status.value,
            public_key_fingerprint=found.public_key_fingerprint,
            enrolled_at=found.enrolled_at,
            tags=list(found.tags),
        )

    return router
