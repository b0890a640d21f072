"""Update statuses (issue 11): every ``kf.update`` a terminal sent, stored once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str) -> sa.Column[object]:
    kind = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")
    return sa.Column(name, kind, nullable=False)


def upgrade() -> None:
    op.create_table(
        "update_status",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("rollout_id", sa.String(64), nullable=True),
        sa.Column("directive_seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("detail", sa.String(256), nullable=True),
        _ts("occurred_at"),
        _ts("received_at"),
        sa.UniqueConstraint(
            "terminal_id", "boot_id", "seq", name="uq_update_status_terminal_boot_seq"
        ),
    )
    op.create_index(
        "ix_update_status_terminal_received", "update_status", ["terminal_id", "received_at"]
    )
    op.create_index(
        "ix_update_status_rollout_terminal", "update_status", ["rollout_id", "terminal_id"]
    )
    op.create_index("ix_update_status_received", "update_status", ["received_at"])


def downgrade() -> None:
    op.drop_table("update_status")
