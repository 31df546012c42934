"""PostgreSQL adapter: load what a batch needs (locking its customers), write back what it changed.

The hot path talks to asyncpg directly (``clm_shared.transactions``): array parameters and COPY
instead of thousands of bound parameters, which profiling showed to be most of the engine's time.
The dedup table, outbox and timers are the consumer toolkit's (``clm_shared``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from clm_shared.dedup import Dedup
from clm_shared.outbox import Outbox
from clm_shared.timers import Timers
from clm_shared.transactions import Db
from stage_engine.batch import BatchState
from stage_engine.events import HISTORY_COLUMNS, to_history_record, to_record
from stage_engine.lifecycle import CustomerState, next_timer
from stage_engine.rules import Rules
from stage_engine.stored_state import dump_state, load_state

DEDUP = Dedup()
OUTBOX = Outbox()
TIMERS = Timers()


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


async def load_batch(db: Db, ids: set[str], message_ids: Sequence[str], *, claimed: bool = False) -> BatchState:
    """Lock and load every customer the ids resolve to, the identities, and which messages are done.

    ``claimed``: the caller claimed every message id in this transaction (``Dedup.claim``), so none is done.
    """
    while True:
        mapping = await resolve(db, ids)
        canonical = {mapping.get(i, i) for i in ids}
        await lock_customers(db, canonical | ids)
        # Another engine may have merged one of them while this one waited for the lock.
        if await resolve(db, ids) == mapping:
            break
    loaded = await load_customers(db, canonical)
    done = set() if claimed else await DEDUP.seen(db, message_ids)
    return BatchState(loaded, mapping, done, loaded=dict(loaded), claimed=claimed)


async def load_customers(db: Db, ids: Iterable[str]) -> dict[str, CustomerState]:
    wanted = list(ids)
    if not wanted:
        return {}
    rows = await db.fetch("SELECT state FROM customers WHERE customer_id = ANY($1::text[])", wanted)
    states = [load_state(row[0]) for row in rows]
    return {state.customer_id: state for state in states}


async def save_batch(db: Db, state: BatchState, rules: Rules, topic: str, now: datetime) -> None:
    """Write the batch's effects in the caller's transaction: state, dedup, history, outbox and timers together."""
    # Only customers the batch changed: an unchanged state has an unchanged row and timer.
    touched = state.changed()
    if touched:
        await db.execute(
            """
            INSERT INTO customers (customer_id, stage, health, state, updated_at)
            SELECT u.id, u.stage, u.health, u.state, now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[]) AS u(id, stage, health, state)
            ON CONFLICT (customer_id) DO UPDATE
            SET stage = excluded.stage, health = excluded.health, state = excluded.state, updated_at = now()
            """,
            [c.customer_id for c in touched],
            [c.stage.value if c.stage else None for c in touched],
            [c.health.value for c in touched],
            [dump_state(c) for c in touched],
        )
    if state.removed:
        removed = list(state.removed)
        await db.execute("DELETE FROM customers WHERE customer_id = ANY($1::text[])", removed)
        await TIMERS.cancel(db, removed)
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
    # If another engine recorded one of these meanwhile, this fails (an outage-like DuplicateDelivery)
    # and the batch is retried, and then finds it processed.
    if not state.claimed:
        await DEDUP.remember(db, state.new_processed, now)
    if state.emitted:
        await db.copy_records_to_table(
            "history", records=[to_history_record(item) for item in state.emitted], columns=HISTORY_COLUMNS
        )
        await OUTBOX.add(db, [to_record(item, topic) for item in state.emitted])
    await save_timers(db, touched, rules, state.loaded)


async def save_timers(
    db: Db, touched: Sequence[CustomerState], rules: Rules, loaded: Mapping[str, CustomerState]
) -> None:
    """Keep every customer's timer at or before the moment the clock next matters for them.

    A timer is written only when it appears, disappears or moves earlier. Activity, which moves it
    later on almost every touchpoint, leaves the stored one as it is: that one fires early, finds
    nothing to do (inactivity is judged from the state, not from when the timer fired) and is then
    set to the exact time (``reschedule``). One timer write per customer and quiet spell instead of
    one per touchpoint.
    """
    schedule: dict[str, datetime] = {}
    cancel: list[str] = []
    for customer in touched:
        due = next_timer(customer, rules)
        before = loaded.get(customer.customer_id)
        stored = next_timer(before, rules) if before is not None else None
        if due is None:
            if stored is not None:
                cancel.append(customer.customer_id)
        elif stored is None or due < stored:
            schedule[customer.customer_id] = due
    await TIMERS.schedule(db, schedule)
    await TIMERS.cancel(db, cancel)


async def reschedule(db: Db, fired: Iterable[str], customers: Mapping[str, CustomerState], rules: Rules) -> None:
    """Fired timers set to exactly when each customer's clock next matters (or removed)."""
    schedule: dict[str, datetime] = {}
    cancel: list[str] = []
    for customer_id in fired:
        customer = customers.get(customer_id)
        due = next_timer(customer, rules) if customer is not None else None
        if due is None:
            cancel.append(customer_id)
        else:
            schedule[customer_id] = due
    await TIMERS.schedule(db, schedule)
    await TIMERS.cancel(db, cancel)


async def claim_due_timers(db: Db, now: datetime, limit: int) -> list[str]:
    """Due timers whose customers are free, locked so that two engines never fire one twice.

    The timer rows are claimed first and the customers' advisory locks only tried, never waited
    for: a batch holds a customer's lock while it writes that customer's timer row, and waiting
    here would deadlock with it. A customer busy now is picked up on the next round.
    """
    return await TIMERS.claim_due(db, now, limit, try_key_locks=True)
