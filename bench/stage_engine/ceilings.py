"""The stage engine's two ceilings on the benchmark's backlog: consume-only and write-only.

Consume-only: one aiokafka consumer fetching the whole backlog and decoding every record with the
engine's own deserializer, no database. Write-only: the same number of customer, dedup, history and
outbox rows, in the same batches, through the engine's own ``save_batch`` (the same COPY and upsert
statements, and the same state and CloudEvent encoding), with no Kafka and no rules applied, on as
many connections at once as the engine has processes. The
engine's figure over the lower of the two says how much its own work (rules, loading, locking) costs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec

from clm_shared.db import create_engine
from clm_shared.migrations import apply_migrations
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.transactions import transaction
from stage_engine.app import MIGRATIONS
from stage_engine.batch import BatchState, Emitted, Erased, Merged, event_id
from stage_engine.lifecycle import Change, CustomerState
from stage_engine.memory import InMemoryEngine
from stage_engine.repository import save_batch
from stage_engine.rules import load_rules

WRITE_ONLY_SCHEMA = "bench_write_only"


def journey_effects(
    journey: Callable[[int, int], Touchpoint], steps: int
) -> list[tuple[CustomerState, list[Change | Merged | Erased]]]:
    """One customer's state and changes after each step, from the pure engine: what every customer writes."""
    engine = InMemoryEngine(load_rules())
    effects = []
    for step in range(steps):
        emitted = engine.process([journey(0, step)])
        state = engine.customer(journey(0, step).customer_key)
        assert state is not None
        effects.append((state, [e.change for e in emitted]))
    return effects


async def write_only(
    database_url: str,
    journey: Callable[[int, int], Touchpoint],
    customers: int,
    steps: int,
    batch: int,
    topic: str,
    writers: int = 1,
) -> float:
    """Seconds to write what the engine writes for the backlog, batch by batch, through ``save_batch``.

    ``writers`` connections write at once, each its own share of the customers, as that many engine
    processes would (their PostgreSQL work overlaps; the encoding runs in this one process).
    """
    effects = journey_effects(journey, steps)
    rules = load_rules()
    db = create_engine(database_url, schema=WRITE_ONLY_SCHEMA, pool_size=writers)
    try:
        await apply_migrations(db, script_location=MIGRATIONS, schema=WRITE_ONLY_SCHEMA)

        async def write(share: int) -> None:
            for step in range(steps):
                template, changes = effects[step]
                previous = effects[step - 1][0] if step else None
                for first in range(share * batch, customers, batch * writers):
                    ids = [f"cust-{c}" for c in range(first, min(first + batch, customers))]
                    state = _batch_state(ids, step, template, changes, previous)
                    async with transaction(db) as conn:
                        await save_batch(conn, state, rules, topic, datetime.now(UTC))

        began = time.monotonic()
        await asyncio.gather(*(write(share) for share in range(writers)))
        return time.monotonic() - began
    finally:
        async with db.begin() as conn:
            await conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {WRITE_ONLY_SCHEMA} CASCADE")
        # Flush the ceiling's pages now, or the server writes them out while the engine is measured.
        async with db.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql("CHECKPOINT")
        await db.dispose()


def _batch_state(
    ids: Sequence[str],
    step: int,
    template: CustomerState,
    changes: list[Change | Merged | Erased],
    previous: CustomerState | None,
) -> BatchState:
    """What the engine holds after applying ``step``: each customer's state, as loaded and as changed."""
    state = BatchState({}, {}, set())
    for customer_id in ids:
        customer = msgspec.structs.replace(template, customer_id=customer_id)
        state.customers[customer_id] = customer
        if previous is not None:
            state.loaded[customer_id] = msgspec.structs.replace(previous, customer_id=customer_id)
        state.touched.add(customer_id)
        state.new_processed.append(f"bench-{customer_id}-{step}")
        first = customer.sequence - len(changes)
        for n, change in enumerate(changes, start=first + 1):
            state.emitted.append(Emitted(customer_id, n, event_id(customer_id, n, customer.origin), change))
    return state
