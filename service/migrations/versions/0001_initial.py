"""Initial schema: decisions, outcomes, idempotency.

Revision ID: 0001
Revises:
Create Date: 2025-03-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("decision_id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("step", sa.String, nullable=True),
        sa.Column("arm", sa.String, nullable=False),
        sa.Column("policy", sa.String, nullable=False),
        sa.Column("model_version", sa.String, nullable=True),
        sa.Column("propensity", sa.Float, nullable=True),
        sa.Column("explored", sa.Boolean, nullable=False),
        sa.Column("p_accept", sa.Float, nullable=True),
        sa.Column("context", sa.Text, nullable=True),
        sa.Column("candidates", sa.Text, nullable=True),
        sa.Column("reason", sa.String, nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
    )
    op.create_index("ix_decisions_user_id", "decisions", ["user_id"])
    op.create_index("ix_decisions_ts", "decisions", ["ts"])
    op.create_table(
        "outcomes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "decision_id",
            sa.String(32),
            sa.ForeignKey("decisions.decision_id", name="fk_outcomes_decision_id"),
            nullable=True,
        ),
        sa.Column("user_id", sa.String, nullable=False),
        sa.Column("step", sa.String, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("context", sa.Text, nullable=True),
    )
    op.create_index("uq_outcomes_decision_id", "outcomes", ["decision_id"], unique=True)
    op.create_index("ix_outcomes_user_ts", "outcomes", ["user_id", "ts", "id"])
    op.create_table(
        "idempotency",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("route", sa.String(64), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_idempotency_created_at", "idempotency", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency")
    op.drop_table("outcomes")
    op.drop_table("decisions")
