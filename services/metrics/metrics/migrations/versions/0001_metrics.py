"""the metrics service's facts: customers, aliases, daily counters, key events, stages, health, campaigns, CLV fits

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_shared.consumer_tables import create_dedup_table, create_sequences_table
from metrics.facts import COUNTERS

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_dedup_table("processed_messages")
    create_dedup_table("processed_events")
    create_sequences_table()
    op.create_table(
        "aliases",
        sa.Column("alias_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False, index=True),
    )
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("first_touch_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text, nullable=True, index=True),
    )
    op.create_table(
        "daily_facts",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        *(sa.Column(name, sa.Float, nullable=False, server_default="0") for name in COUNTERS),
    )
    op.create_index("ix_daily_facts_day", "daily_facts", ["day"])
    op.create_table(
        "key_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revenue", sa.Float, nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("checkout_id", sa.Text, nullable=True),
    )
    op.create_index("ix_key_events_name_at", "key_events", ["name", "at"])
    op.create_index("ix_key_events_customer", "key_events", ["customer_id", "name", "at"])
    op.create_table(
        "stage_reached",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("stage", sa.Text, primary_key=True),
        sa.Column("reached_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_stage_reached_stage_at", "stage_reached", ["stage", "reached_at"])
    op.create_table(
        "health_changes",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("health", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_health_changes_customer_at", "health_changes", ["customer_id", "at"])
    op.create_index("ix_health_changes_health_at", "health_changes", ["health", "at"])
    op.create_table(
        "campaign_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("campaign", sa.Text, primary_key=True),
        sa.Column("events", sa.Integer, nullable=False),
    )
    op.create_table(
        "clv_fits",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("fitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("customers", sa.Integer, nullable=False),
        sa.Column("mean_12m", sa.Float, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("distribution", JSONB, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "clv_fits",
        "campaign_daily",
        "health_changes",
        "stage_reached",
        "key_events",
        "daily_facts",
        "customers",
        "aliases",
        "last_sequences",
        "processed_events",
        "processed_messages",
    ):
        op.drop_table(table)
