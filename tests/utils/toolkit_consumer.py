"""A consumer built from the toolkit alone, in its own schema: what metrics or campaigns would write."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, Table, Text, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.cloudevents import Envelope, encode
from clm_shared.consumer_tables import dedup_table, outbox_table, sequences_table, timers_table
from clm_shared.db import create_engine
from clm_shared.kafka.consumer import Consumed
from clm_shared.migrations import apply_migrations
from clm_shared.schemas.lifecycle import EventType, Stage, StageChanged
from clm_shared.transactions import Db

MIGRATIONS = Path(__file__).parent / "toolkit_migrations"

metadata = MetaData()
dedup_table(metadata)
outbox_table(metadata)
timers_table(metadata)
sequences_table(metadata)
# No unique key on purpose: an event applied twice would show as two rows.
applied = Table(
    "applied",
    metadata,
    Column("event_id", Text, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("sequence", Integer, nullable=False),
)


@asynccontextmanager
async def toolkit_schema(database_url: str, schema: str) -> AsyncIterator[AsyncEngine]:
    """The test consumer's schema, migrated; dropped afterwards."""
    engine = create_engine(database_url, schema=schema)
    try:
        await apply_migrations(engine, script_location=MIGRATIONS, schema=schema)
        yield engine
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()


async def apply_stage_changes(db: Db, batch: Sequence[Consumed[Envelope]]) -> None:
    """The test consumer's own work: one row per event."""
    await db.executemany(
        "INSERT INTO applied (event_id, customer_id, sequence) VALUES ($1, $2, $3)",
        [(item.value.id, item.value.subject, item.value.sequence) for item in batch],
    )


async def applied_rows(engine: AsyncEngine) -> list[tuple[str, str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT event_id, customer_id, sequence FROM applied ORDER BY customer_id"))
        return [(r[0], r[1], r[2]) for r in rows]


def stage_change(customer: str, sequence: int, *, event_id: str | None = None) -> bytes:
    """One encoded ``clm.stage.changed`` event."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return encode(
        event_id=event_id or f"{customer}/{sequence}",
        event_type=EventType.STAGE_CHANGED,
        service="stage-engine",
        customer_id=customer,
        sequence=sequence,
        time=at,
        data=StageChanged(
            customer_id=customer,
            from_stage=None,
            to_stage=Stage.DISCOVERY,
            rule="first",
            message_id=None,
            event_time=at,
        ),
    ).value
