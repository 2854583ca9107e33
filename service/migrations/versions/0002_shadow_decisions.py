"""Shadow decisions: what a shadow arm would have offered on each served decision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_decisions",
        sa.Column("decision_id", sa.String(32), primary_key=True),
        sa.Column("arm", sa.String, primary_key=True),
        sa.Column("policy", sa.String, nullable=False),
        sa.Column("model_version", sa.String, nullable=True),
        sa.Column("step", sa.String, nullable=True),
        sa.Column("propensity", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("shadow_decisions")
