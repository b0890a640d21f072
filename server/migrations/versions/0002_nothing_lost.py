"""Nothing lost (issue 4): dedup position and delivery counters per terminal; the event table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNTERS = ("reports_received", "events_received", "seq_gaps", "dropped_reports")


def _ts(name: str) -> sa.Column[object]:
    kind = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")
    return sa.Column(name, kind, nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("terminal") as batch:
        batch.add_column(sa.Column("prev_boot_id", sa.String(64), nullable=True))
        for name in _COUNTERS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        _ts("sent_at"),
        _ts("received_at"),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.UniqueConstraint("terminal_id", "boot_id", "seq", name="uq_event_terminal_boot_seq"),
    )
    op.create_index("ix_event_terminal_received", "event", ["terminal_id", "received_at"])
    op.create_index("ix_event_received", "event", ["received_at"])


def downgrade() -> None:
    op.drop_table("event")
    with op.batch_alter_table("terminal") as batch:
        for name in (*_COUNTERS, "prev_boot_id"):
            batch.drop_column(name)
