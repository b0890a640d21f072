"""Device identity (issue 9): the terminal registry, enrollment tokens, device certificates.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    kind = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")
    return sa.Column(name, kind, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "terminal_registry",
        sa.Column("terminal_id", sa.String(64), primary_key=True),
        sa.Column("hall", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("public_key_fingerprint", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("enrolled_at", nullable=True),
    )
    op.create_index("ix_terminal_registry_status", "terminal_registry", ["status"])
    op.create_table(
        "enrollment_token",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
    )
    op.create_index("ix_enrollment_token_terminal_id", "enrollment_token", ["terminal_id"])
    op.create_table(
        "device_certificate",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("public_key_fingerprint", sa.String(64), nullable=False),
        _ts("not_before"),
        _ts("not_after"),
        _ts("revoked_at", nullable=True),
    )
    op.create_index("ix_device_certificate_terminal_id", "device_certificate", ["terminal_id"])
    op.create_index("ix_device_certificate_revoked_at", "device_certificate", ["revoked_at"])


def downgrade() -> None:
    op.drop_table("device_certificate")
    op.drop_table("enrollment_token")
    op.drop_table("terminal_registry")
