"""The coalescer's rounds: shared batches per partition, one round in flight, failures only to their callers."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber
from aiokafka.producer.message_accumulator import BatchBuilder

from clm_shared.kafka.coalescing import BatchCoalescer
from clm_shared.kafka.producer import OutgoingRecord, Publisher, PublishUnavailable

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeProducer:
    """Records each submitted batch; its acknowledgement is a future the test sets."""

    def __init__(self, *, batch_size: int = 16384, refuse: set[TopicPartition] | None = None) -> None:
        self.batch_size = batch_size
        self.refuse = refuse or set()
        self.sent: list[tuple[TopicPartition, int, bool]] = []  # (partition, records, closed when sent)
        self.acks: list[asyncio.Future[object]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[object]:
        tp = TopicPartition(topic, partition)
        if tp in self.refuse:
            raise KafkaTimeoutError()
        self.sent.append((tp, batch.record_count(), batch.closed()))
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]

    def ack_all(self, error: Exception | None = None) -> None:
        for ack in self.acks:
            if not ack.done():
                ack.set_exception(error) if error else ack.set_result(None)


async def test_the_records_of_concurrent_calls_share_one_closed_batch_per_partition() -> None:
    producer = FakeProducer()
    coalescer = BatchCoalescer(producer)
    first = {coalescer.append(A, b"k1", b"v", []), coalescer.append(B, b"k2", b"v", [])}
    second = {coalescer.append(A, b"k3", b"v", [])}
    coalescer.flush_soon()
    coalescer.flush_soon()
    await asyncio.sleep(0)
    assert sorted(producer.sent) == [(A, 2, True), (B, 1, True)]
    assert len(first | second) == 2  # the second call waits on the first call's batch for A
    producer.ack_all()
    await asyncio.wait(first | second)
    assert all(f.result() is None for f in first | second)


async def test_records_arriving_while_a_round_is_in_flight_go_with_the_next_round() -> None:
    producer = FakeProducer()
    coalescer = BatchCoalescer(producer)
    first = coalescer.append(A, b"k", b"1", [])
    coalescer.flush_soon()
    await asyncio.sleep(0)
    later = [coalescer.append(A, b"k", b"2", []), coalescer.append(A, b"k", b"3", [])]
    coalescer.flush_soon()
    await asyncio.sleep(0)
    assert producer.sent == [(A, 1, True)]  # nothing more until the broker answered
    producer.ack_all()
    await first
    await asyncio.sleep(0)
    assert producer.sent == [(A, 1, True), (A, 2, True)]
    producer.ack_all()
    await asyncio.gather(*later)
    await coalescer.drain()


async def test_a_full_batch_is_followed_by_another_for_the_same_partition() -> None:
    producer = FakeProducer(batch_size=1000)
    coalescer = BatchCoalescer(producer)
    futures = [coalescer.append(A, b"k", b"x" * 400, []) for _ in range(5)]
    assert len(set(futures)) > 1
    coalescer.flush_soon()
    for _ in range(len(set(futures))):
        await asyncio.sleep(0)
        producer.ack_all()
        await asyncio.sleep(0)
    await asyncio.gather(*futures)
    assert sum(count for _, count, _ in producer.sent) == 5
    assert all(tp == A for tp, _, _ in producer.sent)


async def test_appending_a_partitions_records_at_once_fills_the_same_batches_in_order() -> None:
    producer = FakeProducer(batch_size=1000)
    coalescer = BatchCoalescer(producer)
    before = coalescer.append(A, b"k", b"x" * 400, [])
    joined = coalescer.append_all(A, [(b"k", b"x" * 400) for _ in range(4)], [])
    assert joined[0] is before and len(joined) == len(set(joined)) > 1  # each batch joined once, the open one first
    coalescer.flush_soon()
    for _ in range(len(joined)):
        await asyncio.sleep(0)
        producer.ack_all()
        await asyncio.sleep(0)
    await asyncio.gather(before, *joined)
    assert sum(count for _, count, _ in producer.sent) == 5


async def test_a_failed_batch_fails_only_the_calls_that_joined_it() -> None:
    producer = FakeProducer(refuse={B})
    coalescer = BatchCoalescer(producer)
    on_a, on_b = coalescer.append(A, b"k", b"v", []), coalescer.append(B, b"k", b"v", [])
    coalescer.flush_soon()
    await asyncio.sleep(0)
    producer.ack_all()
    await on_a
    with pytest.raises(KafkaTimeoutError):
        await on_b


async def test_an_unanswered_round_fails_its_callers_with_the_brokers_error() -> None:
    producer = FakeProducer()
    coalescer = BatchCoalescer(producer)
    acked = coalescer.append(A, b"k", b"v", [])
    coalescer.flush_soon()
    await asyncio.sleep(0)
    producer.ack_all(KafkaTimeoutError())
    with pytest.raises(KafkaTimeoutError):
        await acked


class SessionProducer(FakeProducer):
    """A FakeProducer that also answers what a Publisher asks of its producer."""

    stopped = False

    def __init__(self) -> None:
        super().__init__()
        self.submitted = asyncio.Event()

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[object]:
        ack = await super().send_batch(batch, topic, partition=partition)
        self.submitted.set()
        return ack

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    async def stop(self) -> None:
        self.stopped = True


async def publish_answered(error: Exception) -> tuple[Publisher, SessionProducer]:
    """A publish the broker answers with ``error``: the Publisher and the producer it had."""
    publisher = Publisher("127.0.0.1:1", client_id="test", timeout_s=5)
    producer = SessionProducer()
    publisher._producer, publisher._coalescer = producer, BatchCoalescer(producer)
    call = asyncio.create_task(publisher.publish_many([OutgoingRecord("t", b"v", key=b"k")]))
    await producer.submitted.wait()
    producer.ack_all(error)
    with pytest.raises(PublishUnavailable):
        await call
    return publisher, producer


async def test_a_producer_whose_session_the_broker_refuses_is_replaced_for_the_next_call() -> None:
    """After a broker restart an idempotent producer can get OutOfOrderSequenceNumber on every send."""
    publisher, producer = await publish_answered(OutOfOrderSequenceNumber())
    assert publisher._producer is None and producer.stopped


async def test_a_producer_that_only_timed_out_is_kept() -> None:
    publisher, producer = await publish_answered(KafkaTimeoutError())
    assert publisher._producer is producer and not producer.stopped
