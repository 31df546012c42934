"""A consumer's batch handler: one transaction per batch, with dedup, sequence check and trimming.

``TransactionalHandler`` is what a ``ConsumerLoop`` calls: in one transaction it drops the ids seen
before (and repeats within the batch), checks per-subject sequences, hands the fresh records to the
service's ``apply(db, records)``, remembers their ids and trims the dedup table to its window. The
loop commits the offsets after the transaction, so a crash anywhere applies the batch once.

``apply`` may return the records whose effects must not repeat: only their ids are remembered. The
others changed nothing (or nothing a second time), so a replay may apply them again at no cost, and
the dedup table skips a write per record for a consumer that ignores most of its input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.cloudevents import Envelope
from clm_shared.dedup import Dedup
from clm_shared.kafka.consumer import Consumed
from clm_shared.sequences import SequenceCheck
from clm_shared.transactions import Db, transaction

T = TypeVar("T")
Clock = Callable[[], datetime]
# Returns None (remember every record) or the records whose ids to remember.
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

    async def __call__(self, batch: Sequence[Consumed[T]]) -> None:
        now = self.clock()
        async with transaction(self.engine) as db:
            seen = await self.dedup.seen(db, (self.id_of(item.value) for item in batch))
            fresh: list[Consumed[T]] = []
            for item in batch:
                item_id = self.id_of(item.value)
                if item_id not in seen:
                    seen.add(item_id)
                    fresh.append(item)
            if self.sequence_of is not None:
                await self.sequences.check(db, [self.sequence_of(item.value) for item in fresh])
            acted = await self.apply(db, fresh) if fresh else None
            ids = [self.id_of(item.value) for item in fresh] if acted is None else [self.id_of(v) for v in acted]
            await self.dedup.remember(db, ids, now)
            await self.dedup.trim(db, now - self.dedup_window, len(ids))
        if fresh and self.after_commit is not None:
            self.after_commit()


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
