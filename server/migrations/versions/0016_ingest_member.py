"""The live replicas of the partitioned ingest (issue 13, item 3): ``ingest_member``, one
row per live replica and until when it is live, and ``terminal.open_gaps``, the open
sequence gaps stored with the row for a replica that takes the terminal over
(docs/scale-out.md, "One writer per terminal on nats-server").

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_member",
        sa.Column("member", sa.String(128), primary_key=True),
        sa.Column(
            "expires_at",
            sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite"),
            nullable=False,
        ),
    )
    op.add_column("terminal", sa.Column("open_gaps", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("terminal") as batch:
        batch.drop_column("open_gaps")
    op.drop_table("ingest_member")
