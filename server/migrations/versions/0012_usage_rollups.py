"""Analytics rollups (issue 14): ``usage_hourly``, ``usage_availability`` and the rollup
watermark ``usage_rollup_watermark``.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNTS = (
    "completed",
    "abandoned",
    "failed_printer",
    "failed_reader",
    "failed_network",
    "failed_application",
    "failed_backend",
)


def _ts(name: str) -> sa.Column[object]:
    kind = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")
    return sa.Column(name, kind, nullable=False)


def _id() -> sa.Column[object]:
    kind = sa.BigInteger().with_variant(sa.Integer, "sqlite")
    return sa.Column("id", kind, primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "usage_hourly",
        _id(),
        sa.Column("hall", sa.String(64), nullable=False),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        _ts("hour_start"),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in _COUNTS),
        sa.Column("busy_s", sa.Float, nullable=False),
        sa.Column("pages", sa.BigInteger, nullable=False),
        sa.UniqueConstraint(
            "hall", "terminal_id", "service", "hour_start", name="uq_usage_hourly_key"
        ),
    )
    op.create_index("ix_usage_hourly_hour", "usage_hourly", ["hour_start"])
    op.create_table(
        "usage_availability",
        _id(),
        sa.Column("hall", sa.String(64), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        _ts("hour_start"),
        sa.Column("open_s", sa.Float, nullable=False),
        sa.Column("available_s", sa.Float, nullable=False),
        sa.UniqueConstraint("hall", "service", "hour_start", name="uq_usage_availability_key"),
    )
    op.create_index("ix_usage_availability_hour", "usage_availability", ["hour_start"])
    op.create_table(
        "usage_rollup_watermark",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("last_id", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_rollup_watermark")
    op.drop_table("usage_availability")
    op.drop_table("usage_hourly")
