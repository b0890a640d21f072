"""The operations console (issue 12): people who log in, and their sessions.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    kind = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")
    return sa.Column(name, kind, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "console_user",
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        _ts("created_at"),
        sa.Column("created_by", sa.String(128), nullable=False),
        _ts("disabled_at", nullable=True),
        sa.Column("language", sa.String(16), nullable=True),
    )
    op.create_table(
        "console_session",
        sa.Column("secret_hash", sa.String(64), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        _ts("created_at"),
        _ts("last_seen_at"),
        sa.Column("source", sa.String(64), nullable=True),
    )
    op.create_index("ix_console_session_username", "console_session", ["username"])


def downgrade() -> None:
    op.drop_table("console_session")
    op.drop_table("console_user")
