"""Operator tags on registered terminals (issue 11, rollout selectors): ``terminal_registry.tags``.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The server default fills the rows there are, then goes: the model's default is on the
    # Python side (a JSON server default does not compare on PostgreSQL).
    with op.batch_alter_table("terminal_registry") as batch:
        batch.add_column(sa.Column("tags", sa.JSON, nullable=False, server_default=sa.text("'[]'")))
    with op.batch_alter_table("terminal_registry") as batch:
        batch.alter_column("tags", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("terminal_registry") as batch:
        batch.drop_column("tags")
