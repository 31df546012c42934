"""Rebuild the metrics' facts from the topics into empty tables (stop the metrics service first).

Each group's topics are replayed up to its committed offsets, that is exactly what the service had
applied, through the same handlers; the service applies the rest when it starts. Touchpoints are
replayed first, then the lifecycle events, so merges and erasures reach every fact: a customer who
was erased and came back afterwards is anonymised whole (privacy errs on the safe side).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.consumer import Consumed
from clm_shared.kafka.replay import CommittedBacklog, GroupRunning, refuse_while_group_runs
from clm_shared.migrations import apply_migrations
from clm_shared.serde import DecodeError
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from metrics.app import MIGRATIONS
from metrics.consumers import (
    LIFECYCLE_GROUP,
    TOUCHPOINTS_GROUP,
    lifecycle_deserializer,
    lifecycle_handler,
    touchpoint_deserializer,
    touchpoint_handler,
)
from metrics.tables import metadata

Progress = Callable[[str, int, int], None]


class RebuildRefused(RuntimeError):
    pass


@dataclass
class RebuildReport:
    touchpoints: int
    lifecycle_events: int
    undecodable: int


async def rebuild(settings: Settings, *, progress: Progress = lambda what, done, total: None) -> RebuildReport:
    topics = Topics(settings.topic_namespace)
    groups = [settings.topic_namespace + TOUCHPOINTS_GROUP, settings.topic_namespace + LIFECYCLE_GROUP]
    try:
        for group in groups:
            await refuse_while_group_runs(settings.kafka_bootstrap, group, "metrics service")
    except GroupRunning as exc:
        raise RebuildRefused(str(exc)) from None
    schema = service_schema(settings, "metrics")
    db = create_engine(settings.database_url, schema=schema)
    window = timedelta(days=settings.metrics_dedup_days)

    def now() -> datetime:
        return datetime.now(UTC)

    try:
        await apply_migrations(db, script_location=MIGRATIONS, schema=schema)
        async with db.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(metadata.tables)} RESTART IDENTITY"))
        applied_tp, bad_tp = await _replay(
            CommittedBacklog(settings.kafka_bootstrap, groups[0], [topics.touchpoints], "clm-metrics-rebuild"),
            touchpoint_deserializer,
            touchpoint_handler(db, now, window),
            lambda done, total: progress("touchpoints", done, total),
        )
        applied_ev, bad_ev = await _replay(
            CommittedBacklog(
                settings.kafka_bootstrap,
                groups[1],
                [topics.stage_changes, topics.campaign_events],
                "clm-metrics-rebuild",
            ),
            lifecycle_deserializer,
            lifecycle_handler(db, now, window),
            lambda done, total: progress("lifecycle events", done, total),
        )
    finally:
        await db.dispose()
    return RebuildReport(applied_tp, applied_ev, bad_tp + bad_ev)


async def _replay(
    backlog: CommittedBacklog,
    deserialize: Callable[..., Any],
    handle: Callable[[Sequence[Consumed[Any]]], Awaitable[None]],
    progress: Callable[[int, int], None],
) -> tuple[int, int]:
    seen = undecodable = 0
    async for records in backlog.batches():
        batch = []
        for record in records:
            seen += 1
            try:
                batch.append(Consumed.of(record, deserialize(record.value, topic=record.topic)))
            except DecodeError:
                undecodable += 1  # the live service dead-lettered it already
        if batch:
            await handle(batch)
        progress(seen, backlog.total)
    return seen - undecodable, undecodable
