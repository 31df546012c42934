"""The consumer loop's retry, dead-letter and commit decisions, with a fake consumer and publisher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from aiokafka import ConsumerRecord, TopicPartition

from clm_shared.kafka.consumer import (
    BATCHED_FETCH,
    EAGER_FETCH,
    ERROR_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    Consumed,
    ConsumerConfig,
    ConsumerLoop,
    Fetch,
    kafka_consumer,
)
from clm_shared.kafka.producer import OutgoingRecord, PublishUnavailable
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonDeserializer, JsonSerializer
from clm_shared.transient import TransientError, is_transient
from tests.utils.factories import touchpoint

TOPIC = "clm.touchpoints.v1"
DLQ = "clm.touchpoints.dlq.v1"
serialize = JsonSerializer()


def raw(offset: int, value: bytes, partition: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, b"k", value, None, 1, len(value), [("h", b"1")])


class FakeConsumer:
    """Hands out the given batches one per poll; stops the loop once they are all out."""

    def __init__(self, batches: list[list[ConsumerRecord[bytes, bytes]]]) -> None:
        self.batches = batches
        self.commits: list[dict[TopicPartition, int]] = []
        self.loop: ConsumerLoop[Any] | None = None
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        if not self.batches:
            assert self.loop is not None
            self.loop.stop()
            return {}
        records = self.batches.pop(0)
        grouped: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for r in records:
            grouped.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return grouped

    async def commit(self, offsets: Any = None) -> None:
        self.commits.append(dict(offsets))


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[OutgoingRecord] = []

    async def publish(self, record: OutgoingRecord) -> None:
        self.sent.append(record)

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        self.sent.extend(records)


class Handler:
    """Fails on the records whose event is in ``bad``, and the first ``outage`` calls with ``error``."""

    def __init__(
        self,
        consumer: FakeConsumer,
        *,
        bad: frozenset[str] = frozenset(),
        outage: int = 0,
        error: Exception | None = None,
    ) -> None:
        self.consumer = consumer
        self.bad = bad
        self.outage = outage
        self.error = error
        self.calls = 0
        self.applied: list[Touchpoint] = []
        self.commits_at_success: list[int] = []

    async def __call__(self, batch: Sequence[Consumed[Touchpoint]]) -> None:
        self.calls += 1
        if self.outage:
            self.outage -= 1
            assert self.error is not None
            raise self.error
        if any(item.value.event in self.bad for item in batch):
            raise RuntimeError("cannot apply this record")
        self.applied.extend(item.value for item in batch)
        self.commits_at_success.append(len(self.consumer.commits))


def make_loop(consumer: FakeConsumer, handler: Handler, publisher: FakePublisher) -> ConsumerLoop[Touchpoint]:
    configs: list[ConsumerConfig] = []

    def factory(config: ConsumerConfig) -> FakeConsumer:
        configs.append(config)
        return consumer

    loop = ConsumerLoop(
        bootstrap="unused:9092",
        group_id="g",
        topics=[TOPIC],
        deserializer=JsonDeserializer(Touchpoint),
        handler=handler,
        publisher=publisher,
        dlq_topic=DLQ,
        client_id="test",
        retries=2,
        retry_backoff_s=0,
        consumer_factory=factory,
    )
    consumer.loop = loop
    return loop


async def test_an_undecodable_record_is_dead_lettered_with_its_origin_and_the_rest_applied() -> None:
    good = [touchpoint("Product Viewed") for _ in range(3)]
    consumer = FakeConsumer(
        [[raw(0, serialize(good[0])), raw(1, b"{not json"), raw(2, serialize(good[1])), raw(3, serialize(good[2]))]]
    )
    publisher = FakePublisher()
    handler = Handler(consumer)
    await make_loop(consumer, handler, publisher).run()

    assert [t.message_id for t in handler.applied] == [t.message_id for t in good]
    (dead,) = publisher.sent
    headers = dict(dead.headers)
    assert (dead.topic, dead.value, dead.key) == (DLQ, b"{not json", b"k")
    assert headers[ERROR_HEADER].startswith(b"decode: not JSON")
    assert headers[SOURCE_TOPIC_HEADER] == TOPIC.encode()
    assert (headers[SOURCE_PARTITION_HEADER], headers[SOURCE_OFFSET_HEADER]) == (b"0", b"1")
    assert headers["h"] == b"1"  # the record's own headers are kept
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 4}]
    assert consumer.started and consumer.stopped


async def test_a_record_that_keeps_failing_is_isolated_and_only_it_is_dead_lettered() -> None:
    records = [touchpoint("Product Viewed"), touchpoint("Poison Pill"), touchpoint("Signed Up")]
    consumer = FakeConsumer([[raw(i, serialize(tp)) for i, tp in enumerate(records)]])
    publisher = FakePublisher()
    handler = Handler(consumer, bad=frozenset({"Poison Pill"}))
    await make_loop(consumer, handler, publisher).run()

    assert [t.event for t in handler.applied] == ["Product Viewed", "Signed Up"]
    (dead,) = publisher.sent
    assert JsonDeserializer(Touchpoint)(dead.value).event == "Poison Pill"
    assert dict(dead.headers)[ERROR_HEADER].startswith(b"handler: RuntimeError")
    assert dict(dead.headers)[SOURCE_OFFSET_HEADER] == b"1"
    # 1 try + 2 retries of the batch, then one call per record.
    assert handler.calls == 3 + 3
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 3}]


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError()),
        ConnectionResetError("connection reset"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
        OSError("network unreachable"),
        PublishUnavailable("broker away"),
        TransientError("a concurrent writer won"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_an_outage_is_retried_until_it_ends_and_nothing_is_dead_lettered_or_committed_meanwhile(
    error: Exception,
) -> None:
    records = [touchpoint("Product Viewed") for _ in range(4)]
    consumer = FakeConsumer([[raw(i, serialize(tp)) for i, tp in enumerate(records)]])
    publisher = FakePublisher()
    handler = Handler(consumer, outage=10, error=error)  # many more failures than retries
    await make_loop(consumer, handler, publisher).run()

    assert publisher.sent == []
    assert handler.calls == 11
    assert [t.message_id for t in handler.applied] == [t.message_id for t in records]
    assert handler.commits_at_success == [0]  # nothing committed before the handler succeeded
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 4}]


async def test_offsets_are_committed_only_after_each_batch_was_handled() -> None:
    batches = [[raw(0, serialize(touchpoint()))], [raw(1, serialize(touchpoint())), raw(2, serialize(touchpoint()))]]
    consumer = FakeConsumer(batches)
    handler = Handler(consumer)
    await make_loop(consumer, handler, FakePublisher()).run()
    # When batch n was handled, at most the n batches before it were committed (batch n-1's commit
    # may still be on its way: it overlaps the next batch), and every batch is committed in order.
    assert handler.commits_at_success[0] == 0 and handler.commits_at_success[1] <= 1
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 1}, {TopicPartition(TOPIC, 0): 3}]


def test_outages_are_told_apart_from_bad_records() -> None:
    assert is_transient(asyncpg.exceptions.CannotConnectNowError("starting up"))
    assert is_transient(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert is_transient(sqlalchemy.exc.OperationalError("x", {}, OSError()))
    assert is_transient(sqlalchemy.exc.DBAPIError("x", {}, Exception(), connection_invalidated=True))
    assert not is_transient(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert not is_transient(asyncpg.exceptions.NotNullViolationError("null value"))
    assert not is_transient(ValueError("bad record"))
    assert not is_transient(sqlalchemy.exc.IntegrityError("x", {}, Exception()))


async def test_a_subscriber_off_the_latency_path_lets_the_broker_fill_its_fetches() -> None:
    def built(fetch: Fetch) -> Any:
        return kafka_consumer(ConsumerConfig("127.0.0.1:1", "g", "c", ("t",), fetch))

    eager, batched = built(EAGER_FETCH), built(BATCHED_FETCH)
    assert (eager._fetch_min_bytes, eager._fetch_max_wait_ms) == (1, 500)
    assert (batched._fetch_min_bytes, batched._fetch_max_wait_ms) == (256 * 1024, 100)
