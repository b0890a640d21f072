"""Citizen transactions (issue 14): ``usage_event`` (``kf.usage`` messages) and the
``service`` catalogue.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str) -> sa.Column[object]:
    kind = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")
    return sa.Column(name, kind, nullable=False)


def upgrade() -> None:
    op.create_table(
        "usage_event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("cause", sa.String(16), nullable=True),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("pages", sa.Integer, nullable=False),
        _ts("occurred_at"),
        _ts("received_at"),
        sa.UniqueConstraint(
            "terminal_id", "boot_id", "seq", name="uq_usage_event_terminal_boot_seq"
        ),
    )
    op.create_index(
        "ix_usage_event_terminal_occurred", "usage_event", ["terminal_id", "occurred_at"]
    )
    op.create_index("ix_usage_event_received", "usage_event", ["received_at"])
    op.create_table(
        "service",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("needs", sa.JSON, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        _ts("updated_at"),
        sa.Column("updated_by", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("service")
    op.drop_table("usage_event")
