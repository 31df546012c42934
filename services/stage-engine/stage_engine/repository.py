"""PostgreSQL adapter: load what a batch needs (locking its customers), write back what it changed.

The hot path talks to asyncpg directly (a connection from the SQLAlchemy pool, in an asyncpg
transaction): array parameters (``= ANY($1)``, ``unnest``) and COPY instead of thousands of bound
parameters, which profiling showed to be most of the engine's time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from stage_engine.batch import BatchState
from stage_engine.events import to_history_row, to_record
from stage_engine.lifecycle import CustomerState, next_timer
from stage_engine.rules import Rules
from stage_engine.stored_state import load_state

HISTORY_COLUMNS = (
    "customer_id",
    "sequence",
    "event_id",
    "kind",
    "from_value",
    "to_value",
    "skipped",
    "rule",
    "message_id",
    "event_time",
)


Db = Any  # an asyncpg connection (asyncpg ships no type hints)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[Db]:
    """An asyncpg connection from the engine's pool, inside one transaction (committed on success)."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        db: Db = raw.driver_connection
        async with db.transaction():
            yield db


async def lock_customers(db: Db, ids: Iterable[str]) -> None:
    """Transaction-scoped advisory locks, in one order, so two engines never work on one customer at once.

    Advisory locks cover customers that do not exist yet, which row locks cannot.
    """
    ordered = sorted(set(ids))
    if ordered:
        await db.execute("SELECT pg_advisory_xact_lock(hashtextextended(id, 0)) FROM unnest($1::text[]) AS id", ordered)


async def resolve(db: Db, ids: Iterable[str]) -> dict[str, str]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = await db.fetch("SELECT alias_id, customer_id FROM identities WHERE alias_id = ANY($1::text[])", wanted)
    return {row[0]: row[1] for row in rows}


async def load_batch(db: Db, ids: set[str], message_ids: Sequence[str]) -> BatchState:
    """Lock and load every customer the ids resolve to, the identities, and which messages are done."""
    while True:
        mapping = await resolve(db, ids)
        canonical = {mapping.get(i, i) for i in ids}
        await lock_customers(db, canonical | ids)
        # Another engine may have merged one of them while this one waited for the lock.
        if await resolve(db, ids) == mapping:
            break
    loaded = await load_customers(db, canonical)
    seen = await db.fetch(
        "SELECT message_id FROM processed_messages WHERE message_id = ANY($1::text[])", list(message_ids)
    )
    return BatchState(loaded, mapping, {row[0] for row in seen})


async def load_customers(db: Db, ids: Iterable[str]) -> dict[str, CustomerState]:
    wanted = list(ids)
    if not wanted:
        return {}
    rows = await db.fetch("SELECT state::text FROM customers WHERE customer_id = ANY($1::text[])", wanted)
    states = [load_state(row[0]) for row in rows]
    return {state.customer_id: state for state in states}


async def save_batch(db: Db, state: BatchState, rules: Rules, topic: str) -> None:
    """Write the batch's effects in the caller's transaction: state, history, outbox and timers together."""
    touched = [state.customers[cid] for cid in sorted(state.touched) if cid in state.customers]
    if touched:
        await db.execute(
            """
            INSERT INTO customers (customer_id, stage, health, state, updated_at)
            SELECT u.id, u.stage, u.health, u.state::jsonb, now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(id, stage, health, state)
            ON CONFLICT (customer_id) DO UPDATE
            SET stage = excluded.stage, health = excluded.health, state = excluded.state, updated_at = now()
            """,
            [c.customer_id for c in touched],
            [c.stage.value if c.stage else None for c in touched],
            [c.health.value for c in touched],
            [c.model_dump_json() for c in touched],
        )
    if state.removed:
        removed = list(state.removed)
        await db.execute("DELETE FROM customers WHERE customer_id = ANY($1::text[])", removed)
        await db.execute("DELETE FROM timers WHERE customer_id = ANY($1::text[])", removed)
    if state.merged_into:
        await db.execute(
            """
            UPDATE identities SET customer_id = m.target
            FROM unnest($1::text[], $2::text[]) AS m(removed, target)
            WHERE identities.customer_id = m.removed
            """,
            list(state.merged_into),
            list(state.merged_into.values()),
        )
    if state.new_identities:
        await db.execute(
            """
            INSERT INTO identities (alias_id, customer_id) SELECT * FROM unnest($1::text[], $2::text[])
            ON CONFLICT (alias_id) DO UPDATE SET customer_id = excluded.customer_id
            """,
            list(state.new_identities),
            list(state.new_identities.values()),
        )
    if state.new_processed:
        # No ON CONFLICT: if another engine recorded one of these meanwhile, this transaction fails
        # and the batch is retried, and then finds it processed.
        await db.copy_records_to_table(
            "processed_messages", records=[(m,) for m in state.new_processed], columns=["message_id"]
        )
    if state.emitted:
        rows = [to_history_row(item) for item in state.emitted]
        await db.copy_records_to_table(
            "history", records=[tuple(_text(row[c]) for c in HISTORY_COLUMNS) for row in rows], columns=HISTORY_COLUMNS
        )
        records = [to_record(item, topic) for item in state.emitted]
        await db.copy_records_to_table(
            "outbox", records=[(r.topic, r.key or b"", r.value) for r in records], columns=["topic", "key", "value"]
        )
    await save_timers(db, touched, rules)


def _text(value: Any) -> Any:
    """Enums as their text for COPY (it does not know our types)."""
    return value.value if hasattr(value, "value") and not isinstance(value, datetime) else value


async def save_timers(db: Db, touched: Sequence[CustomerState], rules: Rules) -> None:
    due = {c.customer_id: next_timer(c, rules) for c in touched}
    pending = [(cid, at) for cid, at in due.items() if at is not None]
    done = [cid for cid, at in due.items() if at is None]
    if pending:
        await db.execute(
            """
            INSERT INTO timers (customer_id, due_at) SELECT * FROM unnest($1::text[], $2::timestamptz[])
            ON CONFLICT (customer_id) DO UPDATE SET due_at = excluded.due_at
            """,
            [p[0] for p in pending],
            [p[1] for p in pending],
        )
    if done:
        await db.execute("DELETE FROM timers WHERE customer_id = ANY($1::text[])", done)


async def claim_due_timers(db: Db, now: datetime, limit: int) -> list[str]:
    """Due timers whose customers are free, locked so that two engines never fire one twice.

    The timer rows are claimed first and the customers' advisory locks only tried, never waited
    for: a batch holds a customer's lock while it writes that customer's timer row, and waiting
    here would deadlock with it. A customer busy now is picked up on the next round.
    """
    rows = await db.fetch(
        """
        WITH due AS (
            SELECT customer_id FROM timers WHERE due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED
        )
        SELECT customer_id FROM due WHERE pg_try_advisory_xact_lock(hashtextextended(customer_id, 0))
        """,
        now,
        limit,
    )
    return [row[0] for row in rows]
