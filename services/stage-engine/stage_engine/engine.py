"""The engine's three loops: touchpoint batches in, the outbox relay out, and the inactivity timers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.kafka.consumer import Consumed
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.transient import is_transient as shared_is_transient
from stage_engine.batch import BatchState, apply_batch, apply_clock, ids_needed
from stage_engine.repository import (
    claim_due_timers,
    load_batch,
    load_customers,
    save_batch,
    transaction,
)
from stage_engine.rules import Rules
from stage_engine.tables import outbox

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]

BATCH_SECONDS = Histogram("clm_stage_engine_batch_seconds", "Time to apply one touchpoint batch in PostgreSQL.")
CHANGES = Counter("clm_stage_engine_changes_total", "Lifecycle events written to the outbox.", ["kind"])
RELAYED = Counter("clm_stage_engine_relayed_total", "Lifecycle events published from the outbox.")
CONTENT_TYPE = ("content-type", b"application/cloudevents+json")
# One relay at a time keeps each customer's events in sequence order on the topic.
RELAY_LOCK = 0x636C6D72656C6179


def is_transient(exc: Exception) -> bool:
    """The shared classifier, plus a race between two engines recording the same message."""
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
        # Another engine recorded the same message meanwhile (rebalance): the retry skips it.
        return bool(exc.constraint_name == "processed_messages_pkey")
    return shared_is_transient(exc)


@dataclass
class StageEngine:
    engine: AsyncEngine
    rules: Rules
    publisher: Publisher
    stage_changes_topic: str
    clock: Clock
    relay_batch: int = 500
    timer_batch: int = 500
    dedup_window: timedelta = timedelta(days=30)
    outbox_ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, batch: Sequence[Consumed[Touchpoint]]) -> None:
        """One transaction per batch; the consumer loop commits offsets only after it returns."""
        touchpoints = [item.value for item in batch]
        with BATCH_SECONDS.time():
            async with transaction(self.engine) as db:
                state = await load_batch(db, ids_needed(touchpoints), [tp.message_id for tp in touchpoints])
                apply_batch(touchpoints, state, self.rules)
                await save_batch(db, state, self.rules, self.stage_changes_topic)
        self._count(state)

    async def fire_timers(self) -> int:
        """Apply the engine's clock to every customer whose timer is due; returns how many fired."""
        now = self.clock()
        async with transaction(self.engine) as db:
            due = await claim_due_timers(db, now, self.timer_batch)
            if not due:
                return 0
            state = BatchState(await load_customers(db, due), {}, set())
            apply_clock(due, now, state, self.rules)
            await save_batch(db, state, self.rules, self.stage_changes_topic)
        self._count(state)
        return len(due)

    async def relay_once(self) -> int:
        """Publish the oldest outbox rows, then delete them; a crash in between publishes them again."""
        async with self.engine.begin() as conn:
            got_lock = await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RELAY_LOCK})
            if not got_lock:
                return 0
            rows = (
                await conn.execute(
                    select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.value)
                    .order_by(outbox.c.id)
                    .limit(self.relay_batch)
                )
            ).all()
            if not rows:
                return 0
            await self.publisher.publish_many(
                [OutgoingRecord(r.topic, r.value, key=r.key, headers=(CONTENT_TYPE,)) for r in rows]
            )
            await conn.execute(delete(outbox).where(outbox.c.id.in_([r.id for r in rows])))
        RELAYED.inc(len(rows))
        return len(rows)

    async def run_relay(self, stop: asyncio.Event, idle_s: float = 0.2) -> None:
        while not stop.is_set():
            try:
                if await self.relay_once() == self.relay_batch:
                    continue
            except Exception as exc:  # broker or database away: keep the rows, try again
                log.warning("outbox relay failed; retrying", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            self.outbox_ready.clear()
            await _wait_any(stop, self.outbox_ready, idle_s)

    async def forget_old_messages(self) -> int:
        """Trim the dedup table to its window (in small steps, so it never holds locks for long)."""
        async with transaction(self.engine) as db:
            status = await db.execute(
                "DELETE FROM processed_messages WHERE message_id IN (SELECT message_id FROM processed_messages"
                " WHERE processed_at < $1 LIMIT 10000)",
                self.clock() - self.dedup_window,
            )
        return int(status.split()[-1])

    async def run_timers(self, stop: asyncio.Event, interval_s: float) -> None:
        rounds = 0
        while not stop.is_set():
            rounds += 1
            try:
                if rounds % 600 == 1:  # about every ten minutes at the default interval
                    await self.forget_old_messages()
                fired = await self.fire_timers()
            except Exception as exc:
                log.warning("timer scheduler failed; retrying", error=repr(exc))
                fired = 0
            if fired:
                self.outbox_ready.set()
            if fired < self.timer_batch:
                await _wait_any(stop, None, interval_s)

    def _count(self, state: BatchState) -> None:
        for item in state.emitted:
            CHANGES.labels(type(item.change).__name__).inc()
        if state.emitted:
            self.outbox_ready.set()


async def _wait_any(stop: asyncio.Event, other: asyncio.Event | None, timeout_s: float) -> None:
    waiters = [asyncio.create_task(stop.wait())]
    if other is not None:
        waiters.append(asyncio.create_task(other.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
