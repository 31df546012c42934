"""The engine's three loops: touchpoint batches in, the outbox relay out, and the inactivity timers.

The transaction, dedup table, outbox relay and timer claiming are the consumer toolkit's (clm_shared);
what is the engine's own is what a batch and a due timer do to customers.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.dedup import claim_first
from clm_shared.kafka.consumer import Consumed
from clm_shared.kafka.producer import RecordPublisher
from clm_shared.outbox import OutboxRelay, wait_any
from clm_shared.schemas.touchpoint import AnyTouchpoint, Touchpoint, TouchpointRecord
from clm_shared.transactions import transaction
from stage_engine.batch import BatchState, apply_batch, apply_clock, ids_needed
from stage_engine.repository import (
    DEDUP,
    OUTBOX,
    claim_due_timers,
    load_batch,
    load_customers,
    reschedule,
    save_batch,
)
from stage_engine.rules import Rules

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]

BATCH_SECONDS = Histogram("clm_stage_engine_batch_seconds", "Time to apply one touchpoint batch in PostgreSQL.")
CHANGES = Counter("clm_stage_engine_changes_total", "Lifecycle events written to the outbox.", ["kind"])


@dataclass
class StageEngine:
    engine: AsyncEngine
    rules: Rules
    publisher: RecordPublisher
    stage_changes_topic: str
    clock: Clock
    relay_batch: int = 500
    timer_batch: int = 500
    dedup_window: timedelta = timedelta(days=30)
    outbox_ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.relay = OutboxRelay(self.engine, self.publisher, OUTBOX, batch=self.relay_batch, ready=self.outbox_ready)

    async def handle(self, batch: Sequence[Consumed[TouchpointRecord]] | Sequence[Consumed[Touchpoint]]) -> None:
        """One transaction per batch; the consumer loop commits offsets only after it returns.

        The consumer decodes ``TouchpointRecord``s; callers that hold pydantic ``Touchpoint``s may pass those.
        """
        touchpoints = [item.value for item in batch]
        now = self.clock()
        with BATCH_SECONDS.time():
            state = await claim_first(lambda claim: self._apply(touchpoints, now, claim=claim))
        self._count(state)

    async def _apply(self, touchpoints: list[AnyTouchpoint], now: datetime, *, claim: bool) -> BatchState:
        """``claim``: bet that no messageId was applied before and write them all first, with no lookup."""
        message_ids = [tp.message_id for tp in touchpoints]
        async with transaction(self.engine) as db:
            if claim:
                await DEDUP.claim(db, message_ids, now)
            state = await load_batch(db, ids_needed(touchpoints), message_ids, claimed=claim)
            apply_batch(touchpoints, state, self.rules)
            await save_batch(db, state, self.rules, self.stage_changes_topic, now)
            # Forgetting expired messageIds in every batch keeps the table bounded at any input rate.
            await DEDUP.trim(db, now - self.dedup_window, len(state.new_processed))
        return state

    async def fire_timers(self) -> int:
        """Apply the engine's clock to every customer whose timer is due; returns how many fired."""
        now = self.clock()
        async with transaction(self.engine) as db:
            due = await claim_due_timers(db, now, self.timer_batch)
            if not due:
                return 0
            loaded = await load_customers(db, due)
            state = BatchState(dict(loaded), {}, set(), loaded=loaded)
            apply_clock(due, now, state, self.rules)
            await save_batch(db, state, self.rules, self.stage_changes_topic, now)
            # A timer may fire before anything is due (activity moved it later): set each one exactly.
            await reschedule(db, due, state.customers, self.rules)
        self._count(state)
        return len(due)

    async def relay_once(self) -> int:
        """Publish the oldest outbox rows, then delete them; a crash in between publishes them again."""
        return await self.relay.relay_once()

    async def run_relay(self, stop: asyncio.Event) -> None:
        await self.relay.run(stop)

    async def forget_old_messages(self) -> int:
        """Forget every messageId older than the dedup window (batches do it too, a share each time)."""
        forgotten = 0
        while True:
            async with transaction(self.engine) as db:
                step = await DEDUP.forget_before(db, self.clock() - self.dedup_window, 10_000)
            forgotten += step
            if step < 10_000:
                return forgotten

    async def run_timers(self, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                fired = await self.fire_timers()
            except Exception as exc:
                log.warning("timer scheduler failed; retrying", error=repr(exc))
                fired = 0
            if fired:
                self.outbox_ready.set()
            if fired < self.timer_batch:
                await wait_any(stop, None, interval_s)

    def _count(self, state: BatchState) -> None:
        for kind, count in collections.Counter(type(item.change).__name__ for item in state.emitted).items():
            CHANGES.labels(kind).inc(count)
        if state.emitted:
            self.outbox_ready.set()
