"""Maintenance windows (a terminal or a hall, a reason, an end) and problem acknowledgements.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time() -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")


def upgrade() -> None:
    op.create_table(
        "maintenance_window",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("target", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("until", _time(), nullable=False),
        sa.Column("started_at", _time(), nullable=False),
        sa.Column("started_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_maintenance_window_until", "maintenance_window", ["until"])
    op.create_table(
        "problem_ack",
        sa.Column("terminal_id", sa.String(64), primary_key=True),
        sa.Column("peripheral", sa.String(64), primary_key=True),
        sa.Column("problem_since", _time(), nullable=False),
        sa.Column("condition", sa.String(32), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("assignee", sa.String(128), nullable=True),
        sa.Column("acked_at", _time(), nullable=False),
        sa.Column("acked_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_problem_ack_acked_at", "problem_ack", ["acked_at"])


def downgrade() -> None:
    op.drop_index("ix_problem_ack_acked_at", table_name="problem_ack")
    op.drop_table("problem_ack")
    op.drop_index("ix_maintenance_window_until", table_name="maintenance_window")
    op.drop_table("maintenance_window")
