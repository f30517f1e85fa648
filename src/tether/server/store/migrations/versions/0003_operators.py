"""operators with roles and policies; token labels and expiry

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 19:00:00
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    operators = op.create_table(
        "operators",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("statements", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("disabled_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("operator_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
    # Before operators existed every token was the admin's: keep them working as admins.
    names = [r[0] for r in op.get_bind().execute(
        sa.text("SELECT DISTINCT name FROM operator_tokens"))]
    if names:
        op.bulk_insert(operators, [
            {"name": n, "roles": ["admin"], "statements": [], "created_at": time.time(),
             "created_by": "migration 0003"} for n in names])


def downgrade() -> None:
    with op.batch_alter_table("operator_tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("label")
    op.drop_table("operators")
