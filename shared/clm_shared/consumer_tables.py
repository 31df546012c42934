"""The tables of the consumer toolkit, created in each service's own schema by its own migrations.

A service's metadata gets them with ``dedup_table(metadata)`` etc.; its Alembic migration calls
``create_dedup_table()`` etc. (no service reads another's tables, so each keeps its own copy).
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.sql.schema import SchemaItem

DEDUP_TABLE = "processed_messages"
OUTBOX_TABLE = "outbox"
TIMERS_TABLE = "timers"
SEQUENCES_TABLE = "last_sequences"


def _dedup(name: str) -> list[SchemaItem]:
    # processed_at is indexed: the trim deletes the oldest ids in every batch.
    return [
        Column("message_id", Text, primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index(f"ix_{name}_processed_at", "processed_at"),
    ]


def _outbox(name: str) -> list[SchemaItem]:
    # Rows are published in id order: a customer's events keep their order on the topic.
    return [
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("topic", Text, nullable=False),
        Column("key", LargeBinary, nullable=True),
        Column("value", LargeBinary, nullable=False),
        Column("header_names", ARRAY(Text), nullable=False, server_default=text("'{}'")),
        Column("header_values", ARRAY(LargeBinary), nullable=False, server_default=text("'{}'")),
    ]


def _timers(name: str) -> list[SchemaItem]:
    return [
        Column("timer_id", Text, primary_key=True),
        Column("due_at", DateTime(timezone=True), nullable=False),
        Index(f"ix_{name}_due_at", "due_at"),
    ]


def _sequences(name: str) -> list[SchemaItem]:
    return [
        Column("subject", Text, primary_key=True),
        Column("sequence", BigInteger, nullable=False),
    ]


def dedup_table(metadata: MetaData, name: str = DEDUP_TABLE) -> Table:
    """Ids (messageId or CloudEvent id) already applied, with when, so they can be forgotten later."""
    return Table(name, metadata, *_dedup(name))


def outbox_table(metadata: MetaData, name: str = OUTBOX_TABLE) -> Table:
    """Records written in the same transaction as the state they describe, published by the relay."""
    return Table(name, metadata, *_outbox(name))


def timers_table(metadata: MetaData, name: str = TIMERS_TABLE) -> Table:
    """Durable timers: one due time per timer id."""
    return Table(name, metadata, *_timers(name))


def sequences_table(metadata: MetaData, name: str = SEQUENCES_TABLE) -> Table:
    """The last sequence number seen per subject (customer), to detect gaps."""
    return Table(name, metadata, *_sequences(name))


# For a service's Alembic migration (``upgrade()``): ``create_dedup_table()`` etc.
def create_dedup_table(name: str = DEDUP_TABLE) -> None:
    _create(name, _dedup(name))


def create_outbox_table(name: str = OUTBOX_TABLE) -> None:
    _create(name, _outbox(name))


def create_timers_table(name: str = TIMERS_TABLE) -> None:
    _create(name, _timers(name))


def create_sequences_table(name: str = SEQUENCES_TABLE) -> None:
    _create(name, _sequences(name))


def _create(name: str, items: list[SchemaItem]) -> None:
    from alembic import op

    op.create_table(name, *items)  # alembic creates the table's indexes with it
