"""Rebuild all engine state from the touchpoints topic into empty tables.

Run it while the stage engine is stopped (it refuses while any member of the engine's consumer
group is alive), with its outbox drained (it refuses otherwise, since unpublished changes would be
lost). It replays each partition up to the consumer group's committed
offset, that is exactly what the engine had applied; the engine applies the rest when it starts.
The lifecycle events the replay recomputes have the ids they had when first published, so they are
not published again. Inactivity timers due at the end fire afterwards and stay in the outbox: the
engine publishes them on start (the ones it had published already come again with the same ids).
Customers erased through the API stay erased: their touchpoints from before the erasure are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text

from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import group_members, partitions_of
from clm_shared.kafka.consumer import Consumed
from clm_shared.kafka.producer import Publisher
from clm_shared.migrations import apply_migrations
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import DecodeError, JsonDeserializer
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from clm_shared.transactions import transaction
from stage_engine.app import GROUP_ID, MIGRATIONS
from stage_engine.engine import Clock, StageEngine
from stage_engine.erasure import erased_id_hash, erasure_key, rekey_unkeyed_hashes
from stage_engine.rules import load_rules

ENGINE_TABLES = ("customers", "identities", "processed_messages", "history", "timers", "outbox")
Progress = Callable[[int, int], None]


@dataclass
class RebuildReport:
    touchpoints: int
    undecodable: int
    erased_skipped: int
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
    key = erasure_key(settings)
    undecodable = seen = skipped = 0
    try:
        await apply_migrations(db, script_location=MIGRATIONS, schema=schema)
        await refuse_while_engines_run(settings)
        async with transaction(db) as raw:
            await rekey_unkeyed_hashes(raw, key)
        async with db.begin() as conn:
            pending = await conn.scalar(text("SELECT count(*) FROM outbox"))
            if pending:
                raise RebuildRefused(
                    f"the outbox holds {pending} unpublished lifecycle events: start the stage engine until"
                    " it has published them, stop it, then rebuild"
                )
            erased = {row[0]: row[1] for row in await conn.execute(text("SELECT id_hash, erased_at FROM erased_ids"))}
            await conn.execute(text(f"TRUNCATE {', '.join(ENGINE_TABLES)} RESTART IDENTITY"))
        await consumer.start()
        partitions = [
            TopicPartition(topics.touchpoints, p)
            for p in await partitions_of(settings.kafka_bootstrap, topics.touchpoints)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        starts = await consumer.beginning_offsets(partitions)
        # Exactly what the engine had applied: its committed offsets (nothing for a partition it never committed).
        ends = {tp: max(starts[tp], (await consumer.committed(tp)) or 0) for tp in partitions}
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
                    if was_erased(value, erased, key):
                        skipped += 1
                        continue
                    batch.append(
                        Consumed(record.topic, record.partition, record.offset, record.key, value, record.timestamp)
                    )
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            if batch:
                await engine.handle(batch)
            progress(seen, total)
        async with db.begin() as conn:
            await conn.execute(text("TRUNCATE outbox"))  # published when they were first computed
        while await engine.fire_timers():
            pass
        async with db.begin() as conn:
            changes = await conn.scalar(text("SELECT count(*) FROM history"))
            customers = await conn.scalar(text("SELECT count(*) FROM customers"))
    finally:
        await consumer.stop()
        await db.dispose()
    return RebuildReport(seen, undecodable, skipped, int(customers or 0), int(changes or 0))


class RebuildRefused(RuntimeError):
    pass


async def refuse_while_engines_run(settings: Settings) -> None:
    """Truncating the tables under a running engine would corrupt them: its consumer group must be empty."""
    group = settings.topic_namespace + GROUP_ID
    members = await group_members(settings.kafka_bootstrap, group)
    if members:
        raise RebuildRefused(
            f"{len(members)} stage engine consumer(s) are running in group {group!r} ({', '.join(sorted(members))}):"
            " stop the stage engine (`clm down`, or stop its processes), then rebuild"
        )


def was_erased(tp: Touchpoint, erased: dict[str, datetime], key: bytes) -> bool:
    """A touchpoint of a customer erased after it was received."""
    for any_id in (tp.user_id, tp.anonymous_id, tp.previous_id, tp.customer_key):
        erased_at = erased.get(erased_id_hash(any_id, key)) if any_id else None
        if erased_at is not None and tp.received_at <= erased_at:
            return True
    return False
