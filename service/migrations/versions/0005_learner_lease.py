"""The learner's lease: which ``nextstep learn`` process may promote, and its schedule.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "learner_lease",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=True),
        sa.Column("last_cycle_at", sa.Float, nullable=True),
        sa.Column("last_window_end", sa.Float, nullable=True),
        sa.Column("last_status", sa.String(16), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("learner_lease")
