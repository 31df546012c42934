"""Group commit onto aiokafka's batch API: the records of concurrent calls share one batch per partition.

``AIOKafkaProducer.send()`` costs a coroutine, a partition check, a future and a ``RecordMetadata`` per
record. Here a record is one ``BatchBuilder.append``, and a call waits for one future per partition
batch it joined. At most one round of batches (one per partition) is with the broker at a time, as
aiokafka itself sends at most one request per broker: the records that arrive meanwhile fill the next
round, so batches grow with the load and nothing lingers when the broker is idle.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import TopicPartition


class _Batch:
    """One partition's batch being filled, and the future its callers wait on."""

    __slots__ = ("acked", "builder")

    def __init__(self, builder: BatchBuilder, acked: asyncio.Future[None]) -> None:
        self.builder = builder
        self.acked = acked


class BatchCoalescer:
    """Appends records to per-partition batches and sends them in rounds, one round in flight at a time."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._loop = asyncio.get_running_loop()
        self._lanes: dict[TopicPartition, deque[_Batch]] = {}
        self._flight: asyncio.Task[None] | None = None

    def append(
        self, tp: TopicPartition, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        """Add a record to its partition's open batch; the future is set once the broker acknowledged it."""
        lane = self._lanes.get(tp)
        if lane is None:
            lane = self._lanes[tp] = deque()
        if lane:
            batch = lane[-1]
            if batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is not None:
                return batch.acked
        # No open batch, or a full one (appending closed it): a new batch always takes its first record.
        batch = _Batch(self._producer.create_batch(), self._loop.create_future())
        lane.append(batch)
        batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        return batch.acked

    def append_all(
        self, tp: TopicPartition, records: list[tuple[bytes | None, bytes]], headers: list[tuple[str, bytes]]
    ) -> list[asyncio.Future[None]]:
        """``append`` for records of one partition, in order; the futures of every batch they joined.

        One call per partition and request instead of one per record: the records go straight into
        the builder in a local loop.
        """
        lane = self._lanes.get(tp)
        if lane is None:
            lane = self._lanes[tp] = deque()
        batch = lane[-1] if lane else None
        joined: list[asyncio.Future[None]] = []
        joined_last: _Batch | None = None
        for key, value in records:
            if batch is None or batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                batch = _Batch(self._producer.create_batch(), self._loop.create_future())
                lane.append(batch)
                batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
            if batch is not joined_last:
                joined.append(batch.acked)
                joined_last = batch
        return joined

    def flush_soon(self) -> None:
        """Send the open batches now unless a round is in flight (then they go with the next one).

        The round starts as a task, after the callbacks already queued: requests that arrived in the
        same turn of the event loop join it.
        """
        if self._flight is None or self._flight.done():
            self._flight = self._loop.create_task(self._fly())

    async def drain(self) -> None:
        """Wait until every batch appended so far was sent and answered (before stopping the producer)."""
        while self._flight is not None and not self._flight.done():
            await asyncio.shield(self._flight)

    async def _fly(self) -> None:
        while True:
            round_ = [(tp, lane.popleft()) for tp, lane in self._lanes.items() if lane]
            if not round_:
                return
            sent: list[tuple[_Batch, asyncio.Future[object]]] = []
            for tp, batch in round_:
                batch.builder.close()  # a closed batch is sent at once, without the accumulator's linger
                try:
                    delivered = await self._producer.send_batch(batch.builder, tp.topic, partition=tp.partition)
                except Exception as exc:  # the callers get it; the other batches go on
                    _fail(batch.acked, exc)
                else:
                    sent.append((batch, delivered))
            for batch, delivered in sent:
                try:
                    await delivered
                except Exception as exc:  # the callers get it
                    _fail(batch.acked, exc)
                else:
                    batch.acked.set_result(None)


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    future.set_exception(exc)
    future.exception()  # retrieved here: callers that gave up waiting must not leave a warning behind
