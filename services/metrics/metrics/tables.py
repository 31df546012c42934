"""Tables the metrics service owns (in its own schema); it never reads another service's tables.

Facts are kept per customer so that every definition is exact for any window; an erased customer's
rows are re-keyed to an anonymous id, so counts stay and nothing identifies the person.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, DateTime, Float, Index, Integer, MetaData, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

from clm_shared.consumer_tables import dedup_table, sequences_table
from metrics.facts import COUNTERS

metadata = MetaData()

TOUCHPOINT_DEDUP = "processed_messages"
EVENT_DEDUP = "processed_events"

processed_messages = dedup_table(metadata, TOUCHPOINT_DEDUP)
processed_events = dedup_table(metadata, EVENT_DEDUP)
last_sequences = sequences_table(metadata)

# Ids merged into another customer (anonymous profiles after identify/alias): facts land on the target.
aliases = Table(
    "aliases",
    metadata,
    Column("alias_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False, index=True),
)

# First touch: the earliest touchpoint's time and its context.campaign.source.
customers = Table(
    "customers",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("first_touch_at", DateTime(timezone=True), nullable=False),
    Column("source", Text, nullable=True, index=True),
)

daily_facts = Table(
    "daily_facts",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    *(Column(name, Float, nullable=False, server_default="0") for name in COUNTERS),
    Index("ix_daily_facts_day", "day"),
)

key_events = Table(
    "key_events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("customer_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("revenue", Float, nullable=False),
    Column("score", Float, nullable=True),
    Column("checkout_id", Text, nullable=True),
    Index("ix_key_events_name_at", "name", "at"),
    Index("ix_key_events_customer", "customer_id", "name", "at"),
)

# When each customer first reached each stage (reaching a stage reaches every earlier one).
stage_reached = Table(
    "stage_reached",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("stage", Text, primary_key=True),
    Column("reached_at", DateTime(timezone=True), nullable=False),
    Index("ix_stage_reached_stage_at", "stage", "reached_at"),
)

health_changes = Table(
    "health_changes",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("health", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_health_changes_customer_at", "customer_id", "at"),
    Index("ix_health_changes_health_at", "health", "at"),
)

campaign_daily = Table(
    "campaign_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("type", Text, primary_key=True),
    Column("campaign", Text, primary_key=True),
    Column("events", Integer, nullable=False),
)

# The latest predicted-CLV fits, refitted in the background; the API reads the newest.
clv_fits = Table(
    "clv_fits",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("fitted_at", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False),
    Column("customers", Integer, nullable=False),
    Column("mean_12m", Float, nullable=True),
    Column("reason", Text, nullable=True),
    Column("distribution", JSONB, nullable=False),
)
