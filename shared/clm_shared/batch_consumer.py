"""A consumer's batch handler: one transaction per batch, with dedup, sequence check and trimming.

``TransactionalHandler`` is what a ``ConsumerLoop`` calls: in one transaction it drops the ids seen
before (and repeats within the batch), checks per-subject sequences, hands the fresh records to the
service's ``apply(db, records)``, remembers their ids and trims the dedup table to its window. The
loop commits the offsets after the transaction, so a crash anywhere applies the batch once.

The ids are claimed first, all at once (``Dedup.claim``): a redelivery is rare, and when one
comes the batch is run again the careful way (look the ids up, apply the fresh ones, remember them).

With ``remember_returned``, ``apply`` returns the records whose effects must not repeat, and only
their ids are remembered (always the careful way). The others changed nothing (or nothing a second
time), so a replay may apply them again at no cost, and the dedup table skips a write per record for
a consumer that ignores most of its input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.cloudevents import Envelope
from clm_shared.dedup import Dedup, claim_first
from clm_shared.kafka.consumer import Consumed
from clm_shared.sequences import SequenceCheck
from clm_shared.transactions import Db, transaction

T = TypeVar("T")
Clock = Callable[[], datetime]
# Returns None, or with ``remember_returned`` the records whose ids to remember.
Apply = Callable[[Db, Sequence[Consumed[T]]], Awaitable[Iterable[T] | None]]


@dataclass
class TransactionalHandler(Generic[T]):
    """``id_of`` names a record (messageId, CloudEvent id); ``sequence_of`` its (subject, sequence), if any."""

    engine: AsyncEngine
    apply: Apply[T]
    id_of: Callable[[T], str]
    clock: Clock
    dedup_window: timedelta
    sequence_of: Callable[[T], tuple[str, int]] | None = None
    dedup: Dedup = field(default_factory=Dedup)
    sequences: SequenceCheck = field(default_factory=SequenceCheck)
    after_commit: Callable[[], None] | None = None  # e.g. wake the outbox relay
    remember_returned: bool = False

    async def __call__(self, batch: Sequence[Consumed[T]]) -> None:
        now = self.clock()
        if self.remember_returned:
            fresh = await self._careful(batch, now)
        else:
            fresh = await claim_first(lambda claim: self._claimed(batch, now) if claim else self._careful(batch, now))
        if fresh and self.after_commit is not None:
            self.after_commit()

    async def _claimed(self, batch: Sequence[Consumed[T]], now: datetime) -> list[Consumed[T]]:
        async with transaction(self.engine) as db:
            await self.dedup.claim(db, (self.id_of(item.value) for item in batch), now)
            fresh = _first_of_each(batch, self.id_of)
            await self._apply(db, fresh)
            await self.dedup.trim(db, now - self.dedup_window, len(fresh))
        return fresh

    async def _careful(self, batch: Sequence[Consumed[T]], now: datetime) -> list[Consumed[T]]:
        async with transaction(self.engine) as db:
            seen = await self.dedup.seen(db, (self.id_of(item.value) for item in batch))
            fresh = [item for item in _first_of_each(batch, self.id_of) if self.id_of(item.value) not in seen]
            acted = await self._apply(db, fresh)
            if self.remember_returned and acted is not None:
                ids = [self.id_of(v) for v in acted]
            else:
                ids = [self.id_of(item.value) for item in fresh]
            await self.dedup.remember(db, ids, now)
            await self.dedup.trim(db, now - self.dedup_window, len(ids))
        return fresh

    async def _apply(self, db: Db, fresh: list[Consumed[T]]) -> Iterable[T] | None:
        if self.sequence_of is not None:
            await self.sequences.check(db, [self.sequence_of(item.value) for item in fresh])
        return await self.apply(db, fresh) if fresh else None


def _first_of_each(batch: Sequence[Consumed[T]], id_of: Callable[[T], str]) -> list[Consumed[T]]:
    """The batch without repeats of an id (the first one stays), in order."""
    ids: set[str] = set()
    fresh = []
    for item in batch:
        item_id = id_of(item.value)
        if item_id not in ids:
            ids.add(item_id)
            fresh.append(item)
    return fresh


def cloudevent_handler(
    engine: AsyncEngine,
    apply: Apply[Envelope],
    *,
    clock: Clock,
    dedup_window: timedelta,
    dedup: Dedup | None = None,
    sequences: SequenceCheck | None = None,
) -> TransactionalHandler[Envelope]:
    """For subscribers of lifecycle events: dedup by CloudEvent id, sequences per subject (customer)."""
    return TransactionalHandler(
        engine,
        apply,
        id_of=lambda e: e.id,
        clock=clock,
        dedup_window=dedup_window,
        sequence_of=lambda e: (e.subject, e.sequence),
        dedup=dedup or Dedup(),
        sequences=sequences or SequenceCheck(),
    )
