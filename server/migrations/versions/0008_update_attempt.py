"""Update statuses carry the directive's attempt number (null from agents that predate it).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("update_status", sa.Column("attempt", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("update_status") as batch:
        batch.drop_column("attempt")
