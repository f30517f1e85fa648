"""small outputs kept in the invocation row

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("invocations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stdout_inline", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("stderr_inline", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("invocations", schema=None) as batch_op:
        batch_op.drop_column("stderr_inline")
        batch_op.drop_column("stdout_inline")
