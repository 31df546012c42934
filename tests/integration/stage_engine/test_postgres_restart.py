"""PostgreSQL restarts under the stage engine: nothing is dead-lettered, the end state is the undisturbed one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import orjson
import pytest

from clm_cli.infra.postgres import PostgresServer
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonSerializer
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from stage_engine.app import create_app
from stage_engine.memory import InMemoryEngine
from stage_engine.rules import load_rules
from stage_engine.stored_state import load_state
from tests.conftest import drop_schemas
from tests.integration.stage_engine.test_stage_engine import T0
from tests.utils.clock import FakeClock
from tests.utils.engine_state import processed_count, snapshot
from tests.utils.factories import touchpoint
from tests.utils.kafka import topic_size
from tests.utils.scratch_postgres import scratch_postgres
from tests.waiting import wait_for

serialize = JsonSerializer()
JOURNEY = [("Ad Impression", {}), ("Signed Up", {}), ("Order Completed", {"revenue": 30}), ("Email Opened", {})]


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    with scratch_postgres() as server:
        yield server


def journeys(customers: int, step: int) -> list[Touchpoint]:
    event, props = JOURNEY[step]
    return [
        touchpoint(event, customer=f"c{n}", at=T0 + timedelta(days=step), **props)  # type: ignore[arg-type]
        for n in range(customers)
    ]


async def test_a_postgres_restart_under_the_engine_loses_nothing_and_dead_letters_nothing(
    postgres: PostgresServer, settings: Settings, topics: Topics
) -> None:
    local = settings.model_copy(update={"database_url": postgres.url, "stage_engine_batch_size": 25})
    publisher = Publisher(settings.kafka_bootstrap, client_id="test")

    async def publish(events: list[Touchpoint]) -> None:
        await publisher.publish_many(
            [OutgoingRecord(topics.touchpoints, serialize(tp), key=tp.customer_key.encode()) for tp in events]
        )

    async def applied_at_least(n: int) -> bool:
        return await processed_count(local) >= n

    sent: list[Touchpoint] = []
    app = create_app(local, clock=FakeClock(T0 + timedelta(days=5)))
    try:
        async with app.router.lifespan_context(app):
            await app.state.consumer.assigned.wait()
            for step in range(len(JOURNEY)):
                events = journeys(150, step)
                sent += events
                await publish(events)
                if step == 1:
                    await wait_for(lambda: applied_at_least(100), what="the engine applying")
                    await asyncio.to_thread(postgres.stop)  # while records flow
                if step == 2:
                    await asyncio.to_thread(postgres.start)
            await wait_for(lambda: applied_at_least(len(sent)), timeout_s=90, what="every touchpoint applied")

            async def drained() -> bool:
                return bool((await snapshot(local))["outbox"] == 0)

            await wait_for(drained, what="the outbox drained")
        reference = InMemoryEngine(load_rules())
        reference.process(sent)
        state = await snapshot(local)
        assert {cid: load_state(orjson.dumps(s)) for cid, s in state["customers"].items()} == reference.customers
        assert state["processed"] == len(sent)
        assert await topic_size(settings.kafka_bootstrap, topics.touchpoints_dlq) == 0
    finally:
        await publisher.stop()
        await drop_schemas(postgres.url, settings.schema_namespace)
