"""Transitions stored once however many replicas write them (issue 13): ``transition.cause``
(the message behind a transition) and a unique index on (terminal_id, cause, subject,
to_state).

Rows written before have no cause (NULL never conflicts), so the index holds them as they
are; their duplicates (one per replica that applied the message) are removed first, on
everything such a row says except the server time it was recorded at: the lowest id stays.
A will's offline duplicated this way stays (its occurred_at is each replica's own time).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SAME: tuple[str, ...] = (
    "terminal_id",
    "subject",
    "kind",
    "from_state",
    "to_state",
    "fault_code",
    "reason",
    "occurred_at",
)  # every column but id and recorded_at (GROUP BY takes NULLs as equal)


def upgrade() -> None:
    transition = sa.table("transition", sa.column("id"), *(sa.column(name) for name in _SAME))
    kept = sa.select(sa.func.min(transition.c.id)).group_by(*(transition.c[n] for n in _SAME))
    op.execute(sa.delete(transition).where(transition.c.id.not_in(kept)))
    with op.batch_alter_table("transition") as batch:
        batch.add_column(sa.Column("cause", sa.String(128), nullable=True))
    op.create_index(
        "uq_transition_cause",
        "transition",
        ["terminal_id", "cause", "subject", "to_state"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_transition_cause", table_name="transition")
    with op.batch_alter_table("transition") as batch:
        batch.drop_column("cause")
