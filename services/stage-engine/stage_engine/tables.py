"""Tables the stage engine owns (in its own schema); no other service reads them."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    true,
)

from clm_shared.consumer_tables import dedup_table, outbox_table, timers_table

metadata = MetaData()

customers = Table(
    "customers",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("stage", String(20), nullable=True),
    Column("health", String(20), nullable=False),
    Column("state", LargeBinary, nullable=False),  # MessagePack (stage_engine.stored_state)
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("customers_stage_idx", "stage", "customer_id"),
    Index("customers_health_idx", "health", "customer_id"),
    postgresql_with={"fillfactor": 70},
)

# Every id a customer is known by besides their canonical id (anonymous ids after a merge).
identities = Table(
    "identities",
    metadata,
    Column("alias_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False, index=True),
)

# The consumer toolkit's tables: messageIds applied (dedup), inactivity timers per customer, outbox.
processed_messages = dedup_table(metadata)
timers = timers_table(metadata)
outbox = outbox_table(metadata)

# Stage, health and merge history: one row per published lifecycle event.
history = Table(
    "history",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("customer_id", Text, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("kind", String(10), nullable=False),
    Column("from_value", Text, nullable=True),
    Column("to_value", Text, nullable=False),
    Column("skipped", ARRAY(Text), nullable=False, server_default="{}"),
    Column("rule", Text, nullable=False),
    Column("message_id", Text, nullable=True),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Index("history_customer_idx", "customer_id", "sequence"),
)

# What erasure leaves: how many customers were erased at which stage and health, nothing personal.
erased_counts = Table(
    "erased_counts",
    metadata,
    Column("stage", String(20), primary_key=True),
    Column("health", String(20), primary_key=True),
    Column("customers", Integer, nullable=False),
)

erased_ids = Table(
    "erased_ids",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
    # False only for rows of versions that stored plain SHA-256; the engine re-keys them on start.
    Column("keyed", Boolean, nullable=False, server_default=true()),
)
