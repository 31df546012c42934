"""Drop records applied before: their ids are remembered in the consumer's own table for a window.

Everything runs in the caller's batch transaction, trimming included: each batch forgets more
expired ids than it remembers, so the table stays bounded at any input rate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import asyncpg
from prometheus_client import Counter

from clm_shared.consumer_tables import DEDUP_TABLE
from clm_shared.transactions import Db
from clm_shared.transient import TransientError

FORGOTTEN = Counter("clm_dedup_forgotten_total", "Ids dropped from a dedup table after their window.", ["table"])


class DuplicateDelivery(TransientError):
    """Another consumer recorded one of the batch's ids meanwhile (a rebalance): the retry skips it."""


class AlreadyApplied(TransientError):
    """``claim`` met an id applied before: run the batch again the careful way (``seen``, ``remember``).

    Transient, so that a caller who lets it escape gets the batch retried, never dead-lettered.
    """


R = TypeVar("R")


async def claim_first(attempt: Callable[[bool], Awaitable[R]]) -> R:
    """``attempt(True)``: a transaction that begins with ``Dedup.claim``. After an ``AlreadyApplied``
    (a redelivery), ``attempt(False)``: the same batch the careful way (``seen``, then ``remember``)."""
    try:
        return await attempt(True)
    except AlreadyApplied:
        return await attempt(False)


@dataclass(frozen=True)
class Dedup:
    """One dedup table; ``trim_per_id`` expired ids are forgotten per id remembered (at least ``trim_min``)."""

    table: str = DEDUP_TABLE
    trim_per_id: int = 2
    trim_min: int = 1000

    async def seen(self, db: Db, ids: Iterable[str]) -> set[str]:
        """Which of these ids were applied already."""
        wanted = list(set(ids))
        if not wanted:
            return set()
        rows = await db.fetch(f"SELECT message_id FROM {self.table} WHERE message_id = ANY($1::text[])", wanted)
        return {row[0] for row in rows}

    async def claim(self, db: Db, ids: Iterable[str], at: datetime) -> None:
        """Remember every id at once, first thing in the batch's transaction, on the bet that none was
        applied before (a redelivery is rare): no lookup. Raises ``AlreadyApplied`` if one was; the
        transaction is then aborted. One that waited on another consumer's id finds it applied once
        that one commits.
        """
        await self._write(db, set(ids), at, AlreadyApplied("an id of this batch was applied before"))

    async def remember(self, db: Db, ids: Sequence[str], at: datetime) -> None:
        """Record ids as applied; if another consumer recorded one meanwhile, the transaction must retry."""
        await self._write(db, ids, at, DuplicateDelivery("an id of this batch was applied meanwhile"))

    async def _write(self, db: Db, ids: Iterable[str], at: datetime, taken: TransientError) -> None:
        """No ON CONFLICT: a concurrent writer of the same id must fail this batch (``taken``), not
        double-apply it. Sorted, so two consumers writing overlapping ids wait for each other and
        never deadlock."""
        ordered = sorted(ids)
        if not ordered:
            return
        try:
            await db.copy_records_to_table(
                self.table, records=[(i, at) for i in ordered], columns=["message_id", "processed_at"]
            )
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise taken from exc

    async def forget_before(self, db: Db, cutoff: datetime, limit: int) -> int:
        """Forget up to ``limit`` ids applied before ``cutoff``; rows another transaction trims are skipped."""
        status = await db.execute(
            f"DELETE FROM {self.table} WHERE message_id IN (SELECT message_id FROM {self.table}"
            " WHERE processed_at < $1 ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            cutoff,
            limit,
        )
        forgotten = int(status.split()[-1])
        if forgotten:
            FORGOTTEN.labels(self.table).inc(forgotten)
        return forgotten

    async def trim(self, db: Db, cutoff: datetime, remembered: int) -> int:
        """The batch's share of trimming: more than it remembered, so the table cannot grow past the window."""
        return await self.forget_before(db, cutoff, max(self.trim_min, self.trim_per_id * remembered))
