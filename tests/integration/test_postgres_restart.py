"""PostgreSQL restarts under a toolkit consumer: nothing goes to the DLQ, everything is applied exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_cli.infra.postgres import PostgresServer
from clm_shared.batch_consumer import cloudevent_handler
from clm_shared.cloudevents import CloudEventDeserializer, Envelope
from clm_shared.kafka.consumer import Consumed
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.runtime import ConsumerRuntime
from clm_shared.service import ServiceContext
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from clm_shared.transient import is_transient
from tests.utils.kafka import topic_size
from tests.utils.scratch_postgres import scratch_postgres
from tests.utils.toolkit_consumer import applied_rows, apply_stage_changes, stage_change, toolkit_schema
from tests.waiting import wait_for


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A scratch server of this test's own: it gets stopped mid-stream."""
    with scratch_postgres() as server:
        yield server


@pytest.fixture
async def engine(postgres: PostgresServer, namespace: str) -> AsyncIterator[AsyncEngine]:
    async with toolkit_schema(postgres.url, namespace + "toolkit") as engine:
        yield engine


def events(start: int, count: int) -> list[OutgoingRecord]:
    return [
        OutgoingRecord("", stage_change(f"c{n % 7}", n // 7 + 1), key=f"c{n % 7}".encode())
        for n in range(start, start + count)
    ]


async def test_a_postgres_restart_under_a_consumer_loses_nothing_and_dead_letters_nothing(
    postgres: PostgresServer, engine: AsyncEngine, settings: Settings, topics: Topics
) -> None:
    publisher = Publisher(settings.kafka_bootstrap, client_id="test")
    ctx = ServiceContext("metrics", settings.model_copy(update={"database_url": postgres.url}), engine, topics)
    ctx.topics_ready.set()
    runtime = ConsumerRuntime(ctx, publisher, client_id="test")
    handler = cloudevent_handler(
        engine, apply_stage_changes, clock=lambda: datetime.now(UTC), dedup_window=timedelta(days=1)
    )
    failures: list[Exception] = []

    async def watched(batch: Sequence[Consumed[Envelope]]) -> None:
        try:
            await handler(batch)
        except Exception as exc:
            failures.append(exc)
            raise

    runtime.consume(
        group="toolkit",
        topics=[topics.stage_changes],
        deserializer=CloudEventDeserializer(),
        handler=watched,
        dlq_topic=topics.stage_changes_dlq,
        max_batch=20,
        retry_backoff_s=0.05,
    )

    async def publish(records: list[OutgoingRecord]) -> None:
        await publisher.publish_many([OutgoingRecord(topics.stage_changes, r.value, key=r.key) for r in records])

    async def applied_at_least(n: int) -> bool:
        try:
            return len(await applied_rows(engine)) >= n
        except Exception:  # the server is down or starting
            return False

    try:
        await wait_for(ctx.readiness["consumer:toolkit"], what="partitions assigned")
        await publish(events(0, 300))
        await wait_for(lambda: applied_at_least(20), what="the consumer applying")
        await publish(events(300, 300))
        # Stopped while records flow; more arrive while it is down.
        await asyncio.to_thread(postgres.stop)
        await publish(events(600, 300))
        await asyncio.to_thread(postgres.start)
        await publish(events(900, 300))
        await wait_for(lambda: applied_at_least(1200), timeout_s=90, what="every event applied after the restart")
    finally:
        await runtime.stop()
    assert failures, "the consumer never met the outage: the test proves nothing"
    assert all(is_transient(e) for e in failures), failures
    rows = await applied_rows(engine)
    assert len(rows) == 1200
    assert not [event for event, times in Counter(r[0] for r in rows).items() if times > 1]
    assert await topic_size(settings.kafka_bootstrap, topics.stage_changes_dlq) == 0
