"""erased ids as keyed hashes: rows from before are marked unkeyed until the engine re-keys them

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("erased_ids", sa.Column("keyed", sa.Boolean, nullable=False, server_default=sa.false()))
    op.alter_column("erased_ids", "keyed", server_default=sa.true())


def downgrade() -> None:
    op.drop_column("erased_ids", "keyed")
