"""Durable timers in the consumer's own table, claimed with ``FOR UPDATE SKIP LOCKED``.

A claimed timer stays locked until the claiming transaction ends: the caller handles it and
reschedules or cancels it in that transaction, so two instances never fire one timer twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from clm_shared.consumer_tables import TIMERS_TABLE
from clm_shared.transactions import Db


@dataclass(frozen=True)
class Timers:
    table: str = TIMERS_TABLE

    async def schedule(self, db: Db, due: Mapping[str, datetime]) -> None:
        """Set (or move) each timer's due time."""
        if not due:
            return
        await db.execute(
            f"INSERT INTO {self.table} (timer_id, due_at) SELECT * FROM unnest($1::text[], $2::timestamptz[])"
            " ON CONFLICT (timer_id) DO UPDATE SET due_at = excluded.due_at",
            list(due),
            list(due.values()),
        )

    async def cancel(self, db: Db, timer_ids: Iterable[str]) -> None:
        ids = list(timer_ids)
        if ids:
            await db.execute(f"DELETE FROM {self.table} WHERE timer_id = ANY($1::text[])", ids)

    async def claim_due(self, db: Db, now: datetime, limit: int, *, try_key_locks: bool = False) -> list[str]:
        """Due timers not claimed by another transaction, oldest first, locked until this one ends.

        With ``try_key_locks``, only timers whose id's advisory lock (``hashtextextended(id, 0)``, the
        lock a consumer holds while it works on that key) is free now: the lock is tried, never waited
        for, since a batch holding it may be waiting for this timer's row. A busy one comes next round.
        """
        if try_key_locks:
            query = (
                f"WITH due AS (SELECT timer_id FROM {self.table} WHERE due_at <= $1 ORDER BY due_at LIMIT $2"
                " FOR UPDATE SKIP LOCKED)"
                " SELECT timer_id FROM due WHERE pg_try_advisory_xact_lock(hashtextextended(timer_id, 0))"
            )
        else:
            query = (
                f"SELECT timer_id FROM {self.table} WHERE due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED"
            )
        return [row[0] for row in await db.fetch(query, now, limit)]
