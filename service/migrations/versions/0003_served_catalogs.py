"""Served catalogs: the catalog each service start served, so export, report and promote can
validate the store's log without being told which catalog it was.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "served_catalogs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("source", sa.String, nullable=True),
        sa.Column("first_served_at", sa.Float, nullable=False),
        sa.Column("last_served_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("served_catalogs")
