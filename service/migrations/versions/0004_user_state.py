"""Per-user folded state (one row per user) and store facts.

The rows are filled by the service at start-up (``service.user_state.sync_states``, which
needs the catalog) and then kept current with every outcome.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_state",
        sa.Column("user_id", sa.String, primary_key=True),
        sa.Column("catalog", sa.String(64), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("last_ts", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "store_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("store_meta")
    op.drop_table("user_state")
