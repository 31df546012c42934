"""The shared producer and consumer loop against the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from clm_shared.kafka.admin import ensure_topics
from clm_shared.kafka.consumer import (
    ERROR_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_TOPIC_HEADER,
    BatchHandler,
    Consumed,
    ConsumerLoop,
)
from clm_shared.kafka.producer import OutgoingRecord, Publisher, PublishUnavailable
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonDeserializer, JsonSerializer
from clm_shared.topics import Topics
from tests.utils.factories import touchpoint
from tests.utils.kafka import read_records, topic_size
from tests.waiting import wait_for

serialize = JsonSerializer()


@pytest.fixture
async def publisher(kafka_bootstrap: str) -> AsyncIterator[Publisher]:
    publisher = Publisher(kafka_bootstrap, client_id="test")
    await publisher.start()
    yield publisher
    await publisher.stop()


def record(tp: Touchpoint, topic: str) -> OutgoingRecord:
    return OutgoingRecord(topic, serialize(tp), key=tp.customer_key.encode())


async def offset_of(bootstrap: str, topic: str, value: bytes) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        while True:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for r in records:
                    if r.value == value:
                        return int(r.offset)
    finally:
        await consumer.stop()


class Collector:
    """A batch handler that remembers what it saw and can be told to fail on some records."""

    def __init__(self, fail_on: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.seen: list[Touchpoint] = []
        self.batches = 0
        self.fail_on = fail_on

    async def __call__(self, batch: Sequence[Consumed[Touchpoint]]) -> None:
        if any(item.value.event in self.fail_on for item in batch):
            raise RuntimeError("handler cannot process this record")
        self.batches += 1
        self.seen.extend(item.value for item in batch)


def make_loop(
    bootstrap: str, topics: Topics, publisher: Publisher, handler: BatchHandler[Touchpoint], group: str
) -> ConsumerLoop[Touchpoint]:
    return ConsumerLoop(
        bootstrap=bootstrap,
        group_id=group,
        topics=[topics.touchpoints],
        deserializer=JsonDeserializer(Touchpoint),
        handler=handler,
        publisher=publisher,
        dlq_topic=topics.touchpoints_dlq,
        client_id="test",
        retries=1,
        retry_backoff_s=0.01,
    )


async def committed(bootstrap: str, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


async def test_records_round_trip_and_an_undecodable_one_lands_on_the_dlq(
    kafka_bootstrap: str, topics: Topics, publisher: Publisher
) -> None:
    sent = [touchpoint("Product Viewed", customer=f"user-{i % 3}") for i in range(20)]
    await publisher.publish_many([record(tp, topics.touchpoints) for tp in sent[:10]])
    await publisher.publish(OutgoingRecord(topics.touchpoints, b"{not json", key=b"user-0"))
    await publisher.publish_many([record(tp, topics.touchpoints) for tp in sent[10:]])

    collector = Collector()
    loop = make_loop(kafka_bootstrap, topics, publisher, collector, group=topics.namespace + "g")
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: len(collector.seen) >= 20, what="20 touchpoints")
    loop.stop()
    await task

    assert sorted(t.message_id for t in collector.seen) == sorted(t.message_id for t in sent)
    # A customer's records arrive in the order they were sent (one key, one partition).
    for customer in ("user-0", "user-1", "user-2"):
        assert [t.message_id for t in collector.seen if t.customer_key == customer] == [
            t.message_id for t in sent if t.customer_key == customer
        ]
    dead = await read_records(kafka_bootstrap, topics.touchpoints_dlq, expected=1)
    assert len(dead) == 1
    value, headers = dead[0].value, dict(dead[0].headers)
    assert value == b"{not json"
    assert headers[ERROR_HEADER].startswith(b"decode: not JSON")
    assert headers[SOURCE_TOPIC_HEADER] == topics.touchpoints.encode()
    assert int(headers[SOURCE_OFFSET_HEADER]) == await offset_of(kafka_bootstrap, topics.touchpoints, b"{not json")
    # Offsets were committed after processing: all 21 records, the dead-lettered one included.
    assert await committed(kafka_bootstrap, topics.namespace + "g", topics.touchpoints) == 21


async def test_a_record_the_handler_keeps_failing_on_is_dead_lettered_and_the_rest_processed(
    kafka_bootstrap: str, topics: Topics, publisher: Publisher
) -> None:
    good = [touchpoint("Product Viewed", customer="user-1") for _ in range(5)]
    poison = touchpoint("Poison Pill", customer="user-1")
    await publisher.publish_many([record(tp, topics.touchpoints) for tp in [*good[:2], poison, *good[2:]]])

    collector = Collector(fail_on={"Poison Pill"})
    loop = make_loop(kafka_bootstrap, topics, publisher, collector, group=topics.namespace + "g")
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: len(collector.seen) >= 5, what="the five good records")
    dead = await read_records(kafka_bootstrap, topics.touchpoints_dlq, expected=1)
    loop.stop()
    await task

    assert [t.message_id for t in collector.seen] == [t.message_id for t in good]
    assert len(dead) == 1
    assert JsonDeserializer(Touchpoint)(dead[0].value).message_id == poison.message_id
    assert dict(dead[0].headers)[ERROR_HEADER].startswith(b"handler: RuntimeError")


async def test_a_restarted_group_resumes_after_its_committed_offsets(
    kafka_bootstrap: str, topics: Topics, publisher: Publisher
) -> None:
    group = topics.namespace + "g"
    first = [touchpoint(customer=f"c{i}") for i in range(6)]
    await publisher.publish_many([record(tp, topics.touchpoints) for tp in first])
    collector = Collector()
    loop = make_loop(kafka_bootstrap, topics, publisher, collector, group)
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: len(collector.seen) >= 6, what="the first records")
    loop.stop()
    await task

    later = [touchpoint(customer=f"c{i}") for i in range(4)]
    await publisher.publish_many([record(tp, topics.touchpoints) for tp in later])
    again = Collector()
    loop = make_loop(kafka_bootstrap, topics, publisher, again, group)
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: len(again.seen) >= 4, what="the later records")
    loop.stop()
    await task
    assert sorted(t.message_id for t in again.seen) == sorted(t.message_id for t in later)


async def test_topics_are_created_once_with_the_configured_partitions(kafka_bootstrap: str, namespace: str) -> None:
    name = namespace + "created"
    await ensure_topics(kafka_bootstrap, {name: 3})
    await ensure_topics(kafka_bootstrap, {name: 5})  # existing topics are left as they are
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([name])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 3


async def test_publishing_to_an_unreachable_broker_fails_fast_instead_of_hanging() -> None:
    from clm_cli.infra.process import free_port

    publisher = Publisher(f"127.0.0.1:{free_port()}", client_id="test", timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(PublishUnavailable, match="unreachable"):
        await publisher.publish(OutgoingRecord("any", b"x"))
    assert time.monotonic() - started < 10
    await publisher.stop()


async def test_end_offsets_count_every_acknowledged_record(
    kafka_bootstrap: str, topics: Topics, publisher: Publisher
) -> None:
    sent = [touchpoint(customer=f"c{i}") for i in range(50)]
    await publisher.publish_many([record(tp, topics.touchpoints) for tp in sent])
    assert await topic_size(kafka_bootstrap, topics.touchpoints) == 50


async def test_a_transient_failure_is_waited_out_without_dead_lettering_anything(
    kafka_bootstrap: str, topics: Topics, publisher: Publisher
) -> None:
    sent = [touchpoint(customer=f"c{i}") for i in range(5)]
    await publisher.publish_many([record(tp, topics.touchpoints) for tp in sent])
    failures = {"left": 8}  # more than `retries`: a short database outage
    seen: list[Touchpoint] = []

    async def flaky(batch: Sequence[Consumed[Touchpoint]]) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionRefusedError("database restarting")
        seen.extend(item.value for item in batch)

    loop = make_loop(kafka_bootstrap, topics, publisher, flaky, group=topics.namespace + "g")
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: len(seen) >= 5, what="the records after the outage")
    loop.stop()
    await task
    assert sorted(t.message_id for t in seen) == sorted(t.message_id for t in sent)
    assert await topic_size(kafka_bootstrap, topics.touchpoints_dlq) == 0
