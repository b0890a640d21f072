"""The API's public models for tokens and the audit log (what clients send and see).

Built from ``server.access.TokenRecord`` and ``server.audit.AuditEntry`` by
attribute name, so no field is copied by hand. A token's secret appears in one
model only, ``TokenCreatedPublic``, the answer to its creation; its hash never
leaves the server. No I/O here.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from server.access import Role, TokenRecord
from server.audit import AuditEntry, AuditResult
from server.secret_answers import secret_field

__all__ = [
    "AuditEntryPublic",
    "AuditPagePublic",
    "TokenCreate",
    "TokenCreatedPublic",
    "TokenPublic",
    "TokensPublic",
    "audit_public",
    "token_public",
]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64, description="unique; letters, digits, '.', '_', '-'")
    role: Role
    vendor: str | None = Field(
        default=None, max_length=64, description="required for, and only for, role vendor"
    )
    expires: str | None = Field(
        default=None, max_length=40, description="30d, 12h, 90m, 2w or an ISO-8601 time"
    )


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    role: Role
    vendor: str | None
    created_at: datetime
    created_by: str = Field(description="the actor that created it (token:<name>, cli:<user>)")
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="updated at most once a minute")


class TokenCreatedPublic(TokenPublic):
    secret: str = secret_field("the bearer token: shown this once, stored only hashed")


class TokensPublic(BaseModel):
    items: list[TokenPublic]


class AuditEntryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    actor: str = Field(description="token:<name>, cli:<user>, terminal:<id>, anonymous, system")
    action: str = Field(description="dotted verb: token.create, token.revoke, ...")
    result: AuditResult
    target: str | None
    source: str | None = Field(description="client address, when there is one")
    role: str | None
    detail: dict[str, str]


class AuditPagePublic(BaseModel):
    items: list[AuditEntryPublic] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


def token_public(record: TokenRecord, secret: str | None = None) -> TokenPublic:
    if secret is None:
        return TokenPublic.model_validate(record)
    return TokenCreatedPublic(**dict(TokenPublic.model_validate(record)), secret=secret)


def audit_public(entry: AuditEntry) -> AuditEntryPublic:
    return AuditEntryPublic.model_validate(entry)
