"""PostgreSQL adapter: load what a batch needs (locking its customers), write back what it changed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from clm_shared.kafka.producer import OutgoingRecord
from stage_engine.batch import BatchState
from stage_engine.events import to_history_row, to_record
from stage_engine.lifecycle import CustomerState, next_timer
from stage_engine.rules import Rules
from stage_engine.tables import customers, history, identities, outbox, processed_messages, timers


async def lock_customers(conn: AsyncConnection, ids: Iterable[str]) -> None:
    """Transaction-scoped advisory locks, in one order, so two engines never work on one customer at once.

    Advisory locks cover customers that do not exist yet, which row locks cannot.
    """
    ordered = sorted(set(ids))
    if ordered:
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(id, 0)) FROM unnest(CAST(:ids AS text[])) AS id"),
            {"ids": ordered},
        )


async def resolve(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, str]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = await conn.execute(
        select(identities.c.alias_id, identities.c.customer_id).where(identities.c.alias_id.in_(wanted))
    )
    return {alias: canonical for alias, canonical in rows}


async def load_batch(conn: AsyncConnection, ids: set[str], message_ids: Sequence[str]) -> BatchState:
    """Lock and load every customer the ids resolve to, the identities, and which messages are done."""
    while True:
        mapping = await resolve(conn, ids)
        canonical = {mapping.get(i, i) for i in ids}
        await lock_customers(conn, canonical | ids)
        # Another engine may have merged one of them while this one waited for the lock.
        if await resolve(conn, ids) == mapping:
            break
    loaded = await load_customers(conn, canonical)
    seen = await conn.execute(
        select(processed_messages.c.message_id).where(processed_messages.c.message_id.in_(list(message_ids)))
    )
    return BatchState(loaded, mapping, {row[0] for row in seen})


async def load_customers(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, CustomerState]:
    wanted = list(ids)
    if not wanted:
        return {}
    rows = await conn.execute(select(customers.c.state).where(customers.c.customer_id.in_(wanted)))
    states = [CustomerState.model_validate(row[0]) for row in rows]
    return {state.customer_id: state for state in states}


async def save_batch(conn: AsyncConnection, state: BatchState, rules: Rules, topic: str) -> None:
    """Write the batch's effects in the caller's transaction: state, history, outbox and timers together."""
    touched = [state.customers[cid] for cid in sorted(state.touched) if cid in state.customers]
    if touched:
        rows = [
            {"customer_id": c.customer_id, "stage": c.stage, "health": c.health, "state": c.model_dump(mode="json")}
            for c in touched
        ]
        statement = insert(customers)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[customers.c.customer_id],
                set_={
                    "stage": statement.excluded.stage,
                    "health": statement.excluded.health,
                    "state": statement.excluded.state,
                    "updated_at": func.now(),
                },
            ),
            rows,
        )
    if state.removed:
        await conn.execute(delete(customers).where(customers.c.customer_id.in_(list(state.removed))))
        await conn.execute(delete(timers).where(timers.c.customer_id.in_(list(state.removed))))
    if state.new_identities:
        statement = insert(identities)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[identities.c.alias_id], set_={"customer_id": statement.excluded.customer_id}
            ),
            [{"alias_id": a, "customer_id": c} for a, c in state.new_identities.items()],
        )
    if state.new_processed:
        # A plain insert: if another engine recorded one of these meanwhile, this transaction fails
        # and the batch is retried, and then finds it processed.
        await conn.execute(insert(processed_messages), [{"message_id": m} for m in state.new_processed])
    if state.emitted:
        await conn.execute(insert(history), [to_history_row(item) for item in state.emitted])
        await conn.execute(insert(outbox), [_outbox_row(to_record(item, topic)) for item in state.emitted])
    await save_timers(conn, touched, rules)


async def save_timers(conn: AsyncConnection, touched: Sequence[CustomerState], rules: Rules) -> None:
    due = {c.customer_id: next_timer(c, rules) for c in touched}
    pending = [{"customer_id": cid, "due_at": at} for cid, at in due.items() if at is not None]
    done = [cid for cid, at in due.items() if at is None]
    if pending:
        statement = insert(timers)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[timers.c.customer_id], set_={"due_at": statement.excluded.due_at}
            ),
            pending,
        )
    if done:
        await conn.execute(delete(timers).where(timers.c.customer_id.in_(done)))


async def claim_due_timers(conn: AsyncConnection, now: datetime, limit: int) -> list[str]:
    """Due timers, claimed so that two engines never fire one twice."""
    rows = await conn.execute(
        select(timers.c.customer_id)
        .where(timers.c.due_at <= now)
        .order_by(timers.c.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [row[0] for row in rows]


def _outbox_row(record: OutgoingRecord) -> dict[str, Any]:
    return {"topic": record.topic, "key": record.key or b"", "value": record.value}
