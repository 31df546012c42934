"""Replay what a consumer group had applied: every record of its topics up to its committed offsets.

Rebuilds (``clm stage-engine rebuild``, ``clm metrics rebuild``) recompute a service's tables from
the topics with this; the service itself then goes on from those offsets, so nothing is applied twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from clm_shared.kafka.admin import group_members, partitions_of


class GroupRunning(RuntimeError):
    """Members are consuming as the group: its tables must not be rebuilt under them."""


async def refuse_while_group_runs(bootstrap: str, group_id: str, what: str) -> None:
    members = await group_members(bootstrap, group_id)
    if members:
        raise GroupRunning(
            f"{len(members)} {what} consumer(s) are running in group {group_id!r} ({', '.join(sorted(members))}):"
            f" stop the {what} (`clm down`, or stop its processes), then rebuild"
        )


@dataclass
class CommittedBacklog:
    """The records a group had committed, partition by partition, in batches; ``total`` is known after ``open``."""

    bootstrap: str
    group_id: str
    topics: Sequence[str]
    client_id: str
    batch: int = 2000
    total: int = 0

    async def batches(self) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False, client_id=self.client_id
        )
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, p) for topic in self.topics for p in await partitions_of(self.bootstrap, topic)
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            starts = await consumer.beginning_offsets(partitions)
            # Exactly what the group had applied (nothing for a partition it never committed).
            ends = {tp: max(starts[tp], (await consumer.committed(tp)) or 0) for tp in partitions}
            self.total = sum(ends[tp] - starts[tp] for tp in partitions)
            remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
            while remaining:
                fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=self.batch)
                out: list[ConsumerRecord[bytes, bytes]] = []
                for tp, records in fetched.items():
                    out.extend(r for r in records if r.offset < ends[tp])
                    if records and records[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
                yield out
        finally:
            await consumer.stop()
