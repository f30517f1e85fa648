"""node credential rotation

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 19:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pending_credential_hash", sa.String(length=64),
                                      nullable=True))
        batch_op.add_column(sa.Column("credential_rotated_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("credential_rotated_at")
        batch_op.drop_column("pending_credential_hash")
