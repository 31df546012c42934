"""the consumer toolkit's tables, made by its migration helpers, and what the test consumer applies

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from clm_shared.consumer_tables import (
    create_dedup_table,
    create_outbox_table,
    create_sequences_table,
    create_timers_table,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_dedup_table()
    create_outbox_table()
    create_timers_table()
    create_sequences_table()
    op.create_table(
        "applied",
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("applied", "last_sequences", "timers", "outbox", "processed_messages"):
        op.drop_table(table)
