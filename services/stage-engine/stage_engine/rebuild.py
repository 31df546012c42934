"""Rebuild all engine state from the touchpoints topic into empty tables.

Run it while the stage engine is stopped. Every lifecycle event it recomputes has the id it had
when first published (ids follow from customer and sequence), so nothing is published again: the
outbox is emptied at the end. The consumer group's offsets are then set to where the rebuild
stopped, so the engine resumes from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text

from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import partitions_of
from clm_shared.kafka.consumer import Consumed
from clm_shared.kafka.producer import Publisher
from clm_shared.migrations import apply_migrations
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import DecodeError, JsonDeserializer
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from stage_engine.app import GROUP_ID, MIGRATIONS
from stage_engine.engine import Clock, StageEngine
from stage_engine.rules import load_rules

ENGINE_TABLES = ("customers", "identities", "processed_messages", "history", "timers", "outbox")
Progress = Callable[[int, int], None]


@dataclass
class RebuildReport:
    touchpoints: int
    undecodable: int
    customers: int
    changes: int


async def rebuild(settings: Settings, *, clock: Clock, progress: Progress = lambda done, total: None) -> RebuildReport:
    schema = service_schema(settings, "stage-engine")
    topics = Topics(settings.topic_namespace)
    db = create_engine(settings.database_url, schema=schema)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.topic_namespace + GROUP_ID,
        enable_auto_commit=False,
        client_id="clm-stage-engine-rebuild",
    )
    deserialize = JsonDeserializer(Touchpoint)
    engine = StageEngine(
        db,
        load_rules(settings.rules_file),
        Publisher(settings.kafka_bootstrap, client_id="unused"),
        topics.stage_changes,
        clock,
    )
    undecodable = seen = 0
    try:
        await apply_migrations(db, script_location=MIGRATIONS, schema=schema)
        async with db.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(ENGINE_TABLES)} RESTART IDENTITY"))
        await consumer.start()
        partitions = [
            TopicPartition(topics.touchpoints, p)
            for p in await partitions_of(settings.kafka_bootstrap, topics.touchpoints)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        total = sum(ends[tp] - starts[tp] for tp in partitions)
        remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=settings.stage_engine_batch_size)
            batch: list[Consumed[Touchpoint]] = []
            for tp, records in fetched.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    seen += 1
                    try:
                        value = deserialize(record.value)
                    except DecodeError:
                        undecodable += 1  # the live engine dead-lettered it already
                        continue
                    batch.append(
                        Consumed(record.topic, record.partition, record.offset, record.key, value, record.timestamp)
                    )
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            if batch:
                await engine.handle(batch)
            progress(seen, total)
        while await engine.fire_timers():
            pass
        async with db.begin() as conn:
            changes = await conn.scalar(text("SELECT count(*) FROM history"))
            customers = await conn.scalar(text("SELECT count(*) FROM customers"))
            await conn.execute(text("TRUNCATE outbox"))
        await consumer.commit({tp: ends[tp] for tp in partitions})
    finally:
        await consumer.stop()
        await db.dispose()
    return RebuildReport(seen, undecodable, int(customers or 0), int(changes or 0))
