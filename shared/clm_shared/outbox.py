"""The transactional outbox: records written with the state they describe, published by one relay.

A relay publishes the oldest rows and deletes them in one transaction that holds an advisory lock
keyed by the schema and table, so one relay per service publishes at a time and rows keep their
order on the topic. A crash between publish and delete publishes those rows again (same ids).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.consumer_tables import OUTBOX_TABLE
from clm_shared.kafka.producer import OutgoingRecord, RecordPublisher
from clm_shared.transactions import Db, transaction

log = structlog.get_logger(__name__)

RELAYED = Counter("clm_outbox_relayed_total", "Records published from an outbox.", ["table"])

_COLUMNS = ["topic", "key", "value", "header_names", "header_values"]


@dataclass(frozen=True)
class Outbox:
    table: str = OUTBOX_TABLE

    async def add(self, db: Db, records: Sequence[OutgoingRecord]) -> None:
        """Queue records in the caller's transaction: they are published only if it commits."""
        if not records:
            return
        await db.copy_records_to_table(
            self.table,
            records=[(r.topic, r.key, r.value, [h[0] for h in r.headers], [h[1] for h in r.headers]) for r in records],
            columns=_COLUMNS,
        )

    async def pending(self, db: Db) -> int:
        return int(await db.fetchval(f"SELECT count(*) FROM {self.table}"))


@dataclass
class OutboxRelay:
    """Publishes an outbox; ``ready`` wakes it early (set it after a transaction that added rows)."""

    engine: AsyncEngine
    publisher: RecordPublisher
    outbox: Outbox = field(default_factory=Outbox)
    batch: int = 500
    idle_s: float = 0.2
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Another relay of the same service (a second worker process) held the lock in the last round: the
    # rows this process committed meanwhile may not be in that relay's round, so look again soon
    # instead of sleeping ``idle_s`` (that sleep put up to 200 ms on the stage changes' latency).
    contended_retry_s: float = 0.02
    _contended: bool = field(default=False, init=False)

    async def relay_once(self) -> int:
        """Publish the oldest rows, then delete them; 0 when another relay holds the lock."""
        table = self.outbox.table
        async with transaction(self.engine) as db:
            locked = await db.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '.' || $1, 0))", table
            )
            self._contended = not locked
            if not locked:
                return 0
            rows = await db.fetch(
                f"SELECT id, topic, key, value, header_names, header_values FROM {table} ORDER BY id LIMIT $1",
                self.batch,
            )
            if not rows:
                return 0
            # Losing this delete in a crash only publishes the rows again (same ids), which the relay
            # allows anyway: no need to wait for the WAL flush, one fewer wait per round.
            await db.execute("SET LOCAL synchronous_commit = off")
            await self.publisher.publish_many(
                [
                    OutgoingRecord(
                        r["topic"],
                        r["value"],
                        key=r["key"],
                        headers=tuple(zip(r["header_names"], r["header_values"], strict=True)),
                    )
                    for r in rows
                ]
            )
            await db.execute(f"DELETE FROM {table} WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        RELAYED.labels(table).inc(len(rows))
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop``; the broker or database being away only delays it."""
        while not stop.is_set():
            self.ready.clear()  # before the round: rows added during it wake the next one
            try:
                if await self.relay_once() == self.batch:
                    continue
                if self._contended:
                    await wait_any(stop, None, self.contended_retry_s)
                    continue
            except Exception as exc:  # keep the rows, try again
                log.warning("outbox relay failed; retrying", table=self.outbox.table, error=repr(exc))
                await wait_any(stop, None, 1.0)
                continue
            await wait_any(stop, self.ready, self.idle_s)


async def wait_any(stop: asyncio.Event, other: asyncio.Event | None, timeout_s: float) -> None:
    """Sleep up to ``timeout_s``, or until either event is set."""
    waiters = [asyncio.create_task(stop.wait())]
    if other is not None:
        waiters.append(asyncio.create_task(other.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
