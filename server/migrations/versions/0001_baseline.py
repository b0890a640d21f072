"""The schema as ``create_all`` made it before migrations: terminal, peripheral, transition.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    # server.storage.UtcDateTime: timestamptz, ISO-8601 text on SQLite.
    kind = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")
    return sa.Column(name, kind, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "terminal",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("hall", sa.String(64), nullable=True),
        sa.Column("region", sa.String(64), nullable=True),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        _ts("online_since"),
        sa.Column("offline_reason", sa.String(16), nullable=True),
        _ts("last_seen"),
        _ts("last_sent_at", nullable=True),
        sa.Column("boot_id", sa.String(64), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=True),
        sa.Column("report_interval_s", sa.Float(), nullable=True),
        sa.Column("agent_version", sa.String(32), nullable=True),
        sa.Column("software", sa.JSON(), nullable=False),
        _ts("first_seen"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_terminal_hall", "terminal", ["hall"])
    op.create_index("ix_terminal_region", "terminal", ["region"])
    op.create_table(
        "peripheral",
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("condition", sa.String(32), nullable=False),
        sa.Column("fault_code", sa.String(64), nullable=True),
        sa.Column("detail", sa.String(256), nullable=True),
        _ts("since"),
        sa.PrimaryKeyConstraint("terminal_id", "name"),
    )
    op.create_table(
        "transition",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=True),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("fault_code", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(16), nullable=True),
        _ts("occurred_at"),
        _ts("recorded_at"),
    )
    op.create_index("ix_transition_terminal_recorded", "transition", ["terminal_id", "recorded_at"])


def downgrade() -> None:
    op.drop_table("transition")
    op.drop_table("peripheral")
    op.drop_table("terminal")
