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

from sqlalchemy import text

from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.consumer import Consumed
from clm_shared.kafka.producer import Publisher
from clm_shared.kafka.replay import CommittedBacklog, GroupRunning, refuse_while_group_runs
from clm_shared.migrations import apply_migrations
from clm_shared.schemas.touchpoint import AnyTouchpoint, TouchpointRecord
from clm_shared.serde import DecodeError, StructDeserializer
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
    backlog = CommittedBacklog(
        settings.kafka_bootstrap,
        settings.topic_namespace + GROUP_ID,
        [topics.touchpoints],
        client_id="clm-stage-engine-rebuild",
        batch=settings.stage_engine_batch_size,
    )
    deserialize = StructDeserializer(TouchpointRecord, "Touchpoint")
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
        async for records in backlog.batches():
            batch: list[Consumed[TouchpointRecord]] = []
            for record in records:
                seen += 1
                try:
                    value = deserialize(record.value)
                except DecodeError:
                    undecodable += 1  # the live engine dead-lettered it already
                    continue
                if was_erased(value, erased, key):
                    skipped += 1
                    continue
                batch.append(Consumed.of(record, value))
            if batch:
                await engine.handle(batch)
            progress(seen, backlog.total)
        async with db.begin() as conn:
            await conn.execute(text("TRUNCATE outbox"))  # published when they were first computed
        while await engine.fire_timers():
            pass
        async with db.begin() as conn:
            changes = await conn.scalar(text("SELECT count(*) FROM history"))
            customers = await conn.scalar(text("SELECT count(*) FROM customers"))
    finally:
        await db.dispose()
    return RebuildReport(seen, undecodable, skipped, int(customers or 0), int(changes or 0))


class RebuildRefused(RuntimeError):
    pass


async def refuse_while_engines_run(settings: Settings) -> None:
    """Truncating the tables under a running engine would corrupt them: its consumer group must be empty."""
    try:
        await refuse_while_group_runs(settings.kafka_bootstrap, settings.topic_namespace + GROUP_ID, "stage engine")
    except GroupRunning as exc:
        raise RebuildRefused(str(exc)) from None


def was_erased(tp: AnyTouchpoint, erased: dict[str, datetime], key: bytes) -> bool:
    """A touchpoint of a customer erased after it was received."""
    for any_id in (tp.user_id, tp.anonymous_id, tp.previous_id, tp.customer_key):
        erased_at = erased.get(erased_id_hash(any_id, key)) if any_id else None
        if erased_at is not None and tp.received_at <= erased_at:
            return True
    return False
