"""A producer that returns only after the broker acknowledged (acks=all, idempotent)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from clm_shared.kafka.coalescing import BatchCoalescer

log = structlog.get_logger(__name__)


class PublishUnavailable(Exception):
    """The broker did not acknowledge in time: nothing may be reported as accepted."""


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)


class RecordPublisher(Protocol):
    """Where a consumer loop sends dead letters and a relay sends the outbox (tests pass a fake)."""

    async def publish(self, record: OutgoingRecord) -> None: ...

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None: ...


class Publisher:
    """Owns one AIOKafkaProducer; starts it lazily so a service can come up before the broker."""

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str,
        timeout_s: float = 5.0,
        max_batch_size: int = 256 * 1024,
    ) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._max_batch_size = max_batch_size
        self._producer: AIOKafkaProducer | None = None
        self._coalescer: BatchCoalescer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect now; raises PublishUnavailable when the broker does not answer in time."""
        await self._ensure_started()

    async def stop(self) -> None:
        async with self._lock:
            if self._producer is not None and self._coalescer is not None:
                # What was accepted into a batch still goes out, but a dead broker must not hold up a shutdown.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._coalescer.drain(), self._timeout_s)
                await self._producer.stop()
                self._producer = self._coalescer = None

    async def _ensure_started(self) -> tuple[AIOKafkaProducer, BatchCoalescer]:
        if self._producer is not None and self._coalescer is not None:
            return self._producer, self._coalescer
        async with self._lock:
            if self._producer is None or self._coalescer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    client_id=self._client_id,
                    acks="all",
                    enable_idempotence=True,
                    max_batch_size=self._max_batch_size,
                    request_timeout_ms=int(self._timeout_s * 1000),
                )
                try:
                    await asyncio.wait_for(producer.start(), self._timeout_s)
                except (KafkaError, OSError, TimeoutError) as exc:
                    await producer.stop()
                    raise PublishUnavailable(f"Kafka at {self._bootstrap} is unreachable: {exc}") from exc
                self._producer, self._coalescer = producer, BatchCoalescer(producer)
            return self._producer, self._coalescer

    async def publish(self, record: OutgoingRecord) -> None:
        await self.publish_many([record])

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        """Send all records and wait for every acknowledgement, or raise PublishUnavailable.

        The records join the coalescer's per-partition batches with those of concurrent calls; this
        returns once every batch holding one of them was acknowledged.
        """

        async def append(producer: AIOKafkaProducer, coalescer: BatchCoalescer) -> set[asyncio.Future[None]]:
            lanes: dict[str, list[TopicPartition]] = {}
            acked = set()
            for r in records:
                topic_lanes = lanes.get(r.topic)
                if topic_lanes is None:
                    topic_lanes = lanes[r.topic] = await _lanes(producer, r.topic)
                lane = topic_lanes[_pick(r.key, len(topic_lanes))]
                acked.add(coalescer.append(lane, r.key, r.value, list(r.headers)))
            return acked

        if records:
            await self._publish(append, len(records))

    async def publish_keyed(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """``publish_many`` for (key, value) pairs of one topic, without headers: no record object per event."""

        async def append(producer: AIOKafkaProducer, coalescer: BatchCoalescer) -> set[asyncio.Future[None]]:
            lanes = await _lanes(producer, topic)
            count = len(lanes)
            by_lane: list[list[tuple[bytes | None, bytes]]] = [[] for _ in lanes]
            for record in records:  # keys are never None here: ``_pick`` without its test for that
                by_lane[_key_hash(record[0]) % count].append(record)
            acked: set[asyncio.Future[None]] = set()
            for lane, lane_records in zip(lanes, by_lane, strict=True):
                if lane_records:
                    acked.update(coalescer.append_all(lane, lane_records, _NO_HEADERS))
            return acked

        if records:
            await self._publish(append, len(records))

    async def _publish(
        self,
        append: Callable[[AIOKafkaProducer, BatchCoalescer], Awaitable[set[asyncio.Future[None]]]],
        count: int,
    ) -> None:
        producer, coalescer = await self._ensure_started()

        async def send_all() -> None:
            acked = await append(producer, coalescer)
            coalescer.flush_soon()
            # wait(), not await: the futures are shared with other calls, and a timeout here must not cancel them.
            await asyncio.wait(acked)
            for future in acked:
                future.result()

        try:
            await asyncio.wait_for(send_all(), self._timeout_s)
        except (KafkaError, TimeoutError) as exc:
            log.warning("publish failed", records=count, error=repr(exc))
            if isinstance(exc, BROKEN_SESSION):
                await self._discard(producer)
            raise PublishUnavailable(f"Kafka did not acknowledge within {self._timeout_s}s: {exc!r}") from exc

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        """Drop a producer whose idempotence state the broker no longer accepts: the next call starts a new one."""
        async with self._lock:
            replaced = self._producer is not producer  # by another call that failed the same way
            if not replaced:
                self._producer = self._coalescer = None
        if replaced:
            return
        log.warning("producer session rejected by the broker; starting a new producer")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), self._timeout_s)


# The broker refuses the producer's id or sequence numbers (a broker restart can leave them out of step):
# every later send of that producer fails the same way, so it is replaced (a new producer id). Batches it
# had sent were refused, so their callers got a 503 and send again; consumers drop repeats by id.
BROKEN_SESSION = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
)

_NO_HEADERS: list[tuple[str, bytes]] = []  # only read by the batch builder


async def _lanes(producer: AIOKafkaProducer, topic: str) -> list[TopicPartition]:
    """The topic's partitions in order, as the default partitioner numbers them."""
    return [TopicPartition(topic, p) for p in sorted(await producer.partitions_for(topic))]


def _partition(key: bytes | None, partitions: list[int]) -> int:
    """The partition aiokafka's DefaultPartitioner (the Java client's) gives a record, of a topic's sorted ones."""
    return partitions[_pick(key, len(partitions))]


def _pick(key: bytes | None, count: int) -> int:
    """Murmur2 of the key modulo the partition count, random without a key (as ``DefaultPartitioner``).

    Choosing it here, with the hash of a key cached, takes the partitioner's per-record metadata copies
    and pure-Python murmur2 off the hot path.
    """
    return random.randrange(count) if key is None else _key_hash(key) % count


@functools.lru_cache(maxsize=65536)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF
