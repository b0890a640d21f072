"""The device-identity tables: the terminal registry, enrollment tokens, issued certificates.

SQLModel tables in the server's metadata (``server.storage.server_metadata``
imports this module), created by migration ``0003`` (``tags``: ``0014``); read and written only by
``server.terminal_registry``. No secret is stored: an enrollment token is kept
as its SHA-256, a terminal's key as the SHA-256 of its SubjectPublicKeyInfo.
See docs/data-model.md.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field

from server.storage import _Table, _text, _ts  # one base and column style for every table

__all__ = [
    "DeviceCertificateRow",
    "EnrollmentTokenRow",
    "RegistryStatus",
    "TerminalRegistryRow",
]


class RegistryStatus(StrEnum):
    PREAUTHORIZED = "preauthorized"  # may enroll (pre-authorised key or a token), not yet did
    ACTIVE = "active"  # holds a certificate; its messages are admitted
    REVOKED = "revoked"  # its certificates are on the CRL; refused everywhere
    DECOMMISSIONED = "decommissioned"  # removed from the fleet (and revoked)


class TerminalRegistryRow(_Table, table=True):
    """One terminal the operators know: where it stands and which key may be it."""

    __tablename__ = "terminal_registry"

    terminal_id: str = _text(64, nullable=False, primary_key=True)
    hall: str = _text(64, nullable=False)
    region: str = _text(64, nullable=False)
    model: str = _text(64, nullable=False)
    # SHA-256 of the DER SubjectPublicKeyInfo (hex): the pre-authorised key, then the key of
    # the newest certificate. None for a terminal that will enroll with a token.
    public_key_fingerprint: str | None = _text(64)
    status: str = _text(16, nullable=False, index=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    enrolled_at: datetime | None = _ts(nullable=True)
    # The operators' tags (migration 0014; ``TerminalRegistry.set_tags`` bounds them): what a
    # rollout's ``tags`` selector matches.
    tags: list[str] = Field(
        default_factory=list,
        sa_column=sa.Column(sa.JSON, nullable=False, default=lambda: []),
    )


class EnrollmentTokenRow(_Table, table=True):
    """A one-time enrollment token for one terminal id, stored as its SHA-256 only."""

    __tablename__ = "enrollment_token"

    token_hash: str = _text(64, nullable=False, primary_key=True)
    terminal_id: str = _text(64, nullable=False, index=True)
    created_at: datetime = _ts()
    expires_at: datetime = _ts()
    used_at: datetime | None = _ts(nullable=True)


class DeviceCertificateRow(_Table, table=True):
    """Every client certificate the issuing CA gave a terminal (for renewal and the CRL)."""

    __tablename__ = "device_certificate"

    serial: str = _text(40, nullable=False, primary_key=True)  # hex, as openssl prints it
    terminal_id: str = _text(64, nullable=False, index=True)
    public_key_fingerprint: str = _text(64, nullable=False)
    not_before: datetime = _ts()
    not_after: datetime = _ts()
    revoked_at: datetime | None = _ts(nullable=True, index=True)
