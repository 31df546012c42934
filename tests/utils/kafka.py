"""Reading what landed on a topic, for assertions."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonDeserializer

_touchpoint = JsonDeserializer(Touchpoint)


async def read_records(
    bootstrap: str, topic: str, expected: int, *, timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the topic, once at least `expected` arrived (or the timeout passed)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
    finally:
        await consumer.stop()
    return found


async def read_touchpoints(bootstrap: str, topic: str, expected: int) -> list[Touchpoint]:
    return [_touchpoint(r.value) for r in await read_records(bootstrap, topic, expected)]


async def topic_size(bootstrap: str, topic: str) -> int:
    """How many records the topic holds (sum of end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        await consumer.stop()
    return int(sum(ends.values()))
