"""customers, identities, processed messages, history, timers, outbox

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("stage", sa.String(20), nullable=True),
        sa.Column("health", sa.String(20), nullable=False),
        sa.Column("state", JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("customers_stage_idx", "customers", ["stage", "customer_id"])
    op.create_index("customers_health_idx", "customers", ["health", "customer_id"])
    op.create_table(
        "identities",
        sa.Column("alias_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
    )
    op.create_index("ix_identities_customer_id", "identities", ["customer_id"])
    op.create_table("processed_messages", sa.Column("message_id", sa.Text, primary_key=True))
    op.create_table(
        "history",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("from_value", sa.Text, nullable=True),
        sa.Column("to_value", sa.Text, nullable=False),
        sa.Column("skipped", sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, nullable=True),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("history_customer_idx", "history", ["customer_id", "sequence"])
    op.create_table(
        "timers",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_timers_due_at", "timers", ["due_at"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "erased_counts",
        sa.Column("stage", sa.String(20), primary_key=True),
        sa.Column("health", sa.String(20), primary_key=True),
        sa.Column("customers", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("erased_counts", "outbox", "timers", "history", "processed_messages", "identities", "customers"):
        op.drop_table(table)
