"""At-least-once consumer loop: decode, handle a batch, then commit; poison records go to the DLQ."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from clm_shared.kafka.producer import OutgoingRecord, RecordPublisher
from clm_shared.serde import DecodeError, Headers
from clm_shared.transient import is_transient

log = structlog.get_logger(__name__)

T = TypeVar("T")

RECORDS_CONSUMED = Counter("clm_consumer_records_total", "Records handled by a consumer loop.", ["group", "topic"])
RECORDS_DEAD_LETTERED = Counter(
    "clm_consumer_dead_letter_total", "Records sent to the dead-letter topic.", ["group", "topic", "reason"]
)

# DLQ headers: what failed and where the record came from, so it can be inspected and replayed.
ERROR_HEADER = "clm.error"
SOURCE_TOPIC_HEADER = "clm.source.topic"
SOURCE_PARTITION_HEADER = "clm.source.partition"
SOURCE_OFFSET_HEADER = "clm.source.offset"


@dataclass(frozen=True)
class Consumed(Generic[T]):
    """One decoded record with its position."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: T
    timestamp_ms: int

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes], value: T) -> Consumed[T]:
        return cls(record.topic, record.partition, record.offset, record.key, value, record.timestamp)


Deserializer = Callable[..., T]
BatchHandler = Callable[[Sequence[Consumed[T]]], Awaitable[None]]


class KafkaConsumer(Protocol):
    """The part of AIOKafkaConsumer the loop uses (tests pass a fake)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = ..., max_records: int | None = ...
    ) -> Any: ...

    def assignment(self) -> Any: ...

    async def commit(self, offsets: Any = ...) -> None: ...


@dataclass(frozen=True)
class Fetch:
    """How much a fetch waits for: ``min_bytes`` of records, or ``max_wait_ms``, whichever comes first."""

    min_bytes: int = 1
    max_wait_ms: int = 500


# The stage engine: a touchpoint is fetched the moment it is on the topic (ack to stage change).
EAGER_FETCH = Fetch()
# A subscriber off that path (metrics, campaigns): up to 100 ms later, in one fetch where the eager
# one makes dozens at a low rate. Each consumer's fetches were most of the broker's CPU at 2,000
# events/s; under load a fetch fills at once either way.
BATCHED_FETCH = Fetch(min_bytes=256 * 1024, max_wait_ms=100)


@dataclass(frozen=True)
class ConsumerConfig:
    """What a consumer factory needs to build the loop's Kafka consumer."""

    bootstrap: str
    group_id: str
    client_id: str
    topics: Sequence[str]
    fetch: Fetch = EAGER_FETCH


def kafka_consumer(config: ConsumerConfig) -> KafkaConsumer:
    """The default factory: a group member that commits by hand and reads only committed records."""
    consumer: KafkaConsumer = AIOKafkaConsumer(
        *config.topics,
        bootstrap_servers=config.bootstrap,
        group_id=config.group_id,
        client_id=config.client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_min_bytes=config.fetch.min_bytes,
        fetch_max_wait_ms=config.fetch.max_wait_ms,
    )
    return consumer


ConsumerFactory = Callable[[ConsumerConfig], KafkaConsumer]


class ConsumerLoop(Generic[T]):
    """Runs until ``stop()``; offsets are committed only after the handler returned for the batch.

    A transient failure (``transient(exc)`` is true: the database or broker is away; by default
    ``clm_shared.transient.is_transient``) is retried with
    backoff for as long as it lasts, and nothing is committed or dead-lettered meanwhile. Any other
    handler failure is retried ``retries`` times; then the batch is handled one record at a time
    and each record that still fails is dead-lettered, so one bad record never stalls a partition.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topics: Sequence[str],
        deserializer: Deserializer[T],
        handler: BatchHandler[T],
        publisher: RecordPublisher,
        dlq_topic: str,
        client_id: str,
        max_batch: int = 500,
        fetch: Fetch = EAGER_FETCH,
        poll_timeout_ms: int = 200,
        retries: int = 3,
        retry_backoff_s: float = 0.2,
        transient: Callable[[Exception], bool] = is_transient,
        consumer_factory: ConsumerFactory = kafka_consumer,
    ) -> None:
        self._bootstrap = bootstrap
        self.group_id = group_id
        self._topics = list(topics)
        self._deserialize = deserializer
        self._handler = handler
        self._publisher = publisher
        self._dlq_topic = dlq_topic
        self._client_id = client_id
        self._max_batch = max_batch
        self._fetch = fetch
        self._poll_timeout_ms = poll_timeout_ms
        self._retries = retries
        self._retry_backoff_s = retry_backoff_s
        self._transient = transient
        self._consumer_factory = consumer_factory
        self._stopping = asyncio.Event()
        self.assigned = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in hand, commit it and leave the group."""
        self._stopping.set()

    async def run(self) -> None:
        consumer = self._consumer_factory(
            ConsumerConfig(self._bootstrap, self.group_id, self._client_id, tuple(self._topics), self._fetch)
        )
        await consumer.start()
        # A batch's offsets are committed while the next batch is fetched and handled: the broker's
        # answer was a tenth of a busy consumer's time. Commits still go one at a time, in order.
        committing: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self._max_batch)
                if consumer.assignment():
                    self.assigned.set()
                if not batches:
                    continue
                await self._process(batches)
                await self._committed(committing)
                offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
                committing = asyncio.create_task(consumer.commit(offsets))
        finally:
            try:
                await self._committed(committing)
            finally:
                await consumer.stop()

    async def _committed(self, committing: asyncio.Task[None] | None) -> None:
        if committing is None:
            return
        try:
            await committing
        except KafkaError as exc:
            # A rebalance took the partitions away: the new owner gets these records again,
            # and handlers are idempotent, so this is safe to log and move on from.
            log.warning("offset commit failed; records will be redelivered", group=self.group_id, error=repr(exc))

    async def run_forever(self, *, restart_delay_s: float = 1.0) -> None:
        """``run``, restarted with a fresh consumer after an unexpected failure, until ``stop()``."""
        while not self._stopping.is_set():
            try:
                await self.run()
            except Exception as exc:
                log.error("consumer loop failed; restarting", group=self.group_id, error=repr(exc))
                await asyncio.sleep(restart_delay_s)

    async def _process(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        decoded: list[Consumed[T]] = []
        dead: list[OutgoingRecord] = []
        for records in batches.values():
            for record in records:
                try:
                    value = self._deserialize(record.value, topic=record.topic, headers=_headers(record))
                except DecodeError as exc:
                    dead.append(self._dead_letter_record(record, f"decode: {exc}", reason="decode"))
                    continue
                decoded.append(Consumed.of(record, value))
        # One acknowledged send for the batch's poison records, before its offsets can be committed.
        await self._publisher.publish_many(dead)
        if decoded:
            raw = {(r.topic, r.partition, r.offset): r for records in batches.values() for r in records}
            await self._handle(decoded, raw)

    async def _handle(
        self, decoded: list[Consumed[T]], raw: dict[tuple[str, int, int], ConsumerRecord[bytes, bytes]]
    ) -> None:
        attempt = 0
        outage = 0
        while attempt <= self._retries:
            try:
                await self._handler(decoded)
                self._count(decoded)
                return
            except Exception as exc:
                transient = self._transient(exc)
                log.warning(
                    "batch handler failed",
                    group=self.group_id,
                    attempt=attempt + 1,
                    transient=transient,
                    records=len(decoded),
                    error=repr(exc),
                )
                if transient:
                    # Not the records' fault: wait it out, however long, and lose nothing.
                    outage += 1
                    await asyncio.sleep(min(self._retry_backoff_s * (2 ** min(outage, 6)), 10.0))
                    if self._stopping.is_set():
                        raise
                    continue
                attempt += 1
                if attempt <= self._retries:
                    await asyncio.sleep(self._retry_backoff_s * (2 ** (attempt - 1)))
        # The batch keeps failing: find the records that do, one by one.
        for item in decoded:
            try:
                await self._handler([item])
                self._count([item])
            except Exception as exc:
                if self._transient(exc):
                    raise  # an outage began meanwhile: nothing is committed, the batch comes again
                log.error(
                    "record handler failed; dead-lettering",
                    group=self.group_id,
                    topic=item.topic,
                    partition=item.partition,
                    offset=item.offset,
                    error=repr(exc),
                )
                record = raw[(item.topic, item.partition, item.offset)]
                await self._publisher.publish(self._dead_letter_record(record, f"handler: {exc!r}", "handler"))

    def _count(self, items: Sequence[Consumed[T]]) -> None:
        # One increment per topic, not per record: labels() per record showed in the engine's profile.
        for topic, count in collections.Counter(item.topic for item in items).items():
            RECORDS_CONSUMED.labels(self.group_id, topic).inc(count)

    def _dead_letter_record(self, record: ConsumerRecord[bytes, bytes], error: str, reason: str) -> OutgoingRecord:
        log.warning(
            "dead-lettering record",
            group=self.group_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=error,
        )
        headers = [
            *_headers(record),
            (ERROR_HEADER, error.encode()[:4000]),
            (SOURCE_TOPIC_HEADER, record.topic.encode()),
            (SOURCE_PARTITION_HEADER, str(record.partition).encode()),
            (SOURCE_OFFSET_HEADER, str(record.offset).encode()),
        ]
        RECORDS_DEAD_LETTERED.labels(self.group_id, record.topic, reason).inc()
        return OutgoingRecord(self._dlq_topic, record.value or b"", key=record.key, headers=headers)


def _headers(record: ConsumerRecord[bytes, bytes]) -> Headers:
    return list(record.headers or ())
