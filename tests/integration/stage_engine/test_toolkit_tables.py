"""The stage engine's tables: revisions 0004 and 0006 keep the data; dedup stays bounded; timers move lazily."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.consumer import Consumed
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.migrations import apply_migrations
from clm_shared.schemas.lifecycle import Health, Stage
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from stage_engine.app import MIGRATIONS
from stage_engine.engine import StageEngine
from stage_engine.lifecycle import CustomerState
from stage_engine.rules import load_rules
from stage_engine.stored_state import load_state
from tests.utils.clock import FakeClock
from tests.utils.factories import touchpoint
from tests.utils.kafka import read_records

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url, schema=service_schema(settings, "stage-engine"))
    yield engine
    await engine.dispose()


async def scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql))


async def test_revision_0004_keeps_the_queued_outbox_rows_timers_and_message_ids(
    settings: Settings, topics: Topics, db: AsyncEngine
) -> None:
    schema = service_schema(settings, "stage-engine")
    await apply_migrations(db, script_location=MIGRATIONS, schema=schema, revision="0003")
    async with db.begin() as conn:
        await conn.execute(
            text("INSERT INTO outbox (topic, key, value) VALUES (:t, 'u1', :v)"),
            {"t": topics.stage_changes, "v": b'{"queued": "before 0004"}'},
        )
        await conn.execute(text("INSERT INTO timers (customer_id, due_at) VALUES ('u1', :at)"), {"at": T0})
        await conn.execute(text("INSERT INTO processed_messages (message_id) VALUES ('m1')"))
    await apply_migrations(db, script_location=MIGRATIONS, schema=schema)

    assert await scalar(db, "SELECT timer_id FROM timers WHERE due_at = '2026-01-01T00:00:00Z'") == "u1"
    assert await scalar(db, "SELECT count(*) FROM processed_messages WHERE message_id = 'm1'") == 1
    # The queued row is published as before, with the CloudEvents content type the relay used to add.
    publisher = Publisher(settings.kafka_bootstrap, client_id="test")
    engine = StageEngine(db, load_rules(), publisher, topics.stage_changes, FakeClock(T0))
    try:
        assert await engine.relay_once() == 1
    finally:
        await publisher.stop()
    (record,) = await read_records(settings.kafka_bootstrap, topics.stage_changes, expected=1)
    assert (record.key, record.value) == (b"u1", b'{"queued": "before 0004"}')
    assert dict(record.headers) == {"content-type": b"application/cloudevents+json"}


class NoPublisher:
    async def publish(self, record: OutgoingRecord) -> None:
        raise AssertionError("not expected")

    async def publish_many(self, records: object) -> None:
        raise AssertionError("not expected")


async def test_the_engines_dedup_table_stays_bounded_under_a_sustained_input(
    settings: Settings, topics: Topics, db: AsyncEngine
) -> None:
    await apply_migrations(db, script_location=MIGRATIONS, schema=service_schema(settings, "stage-engine"))
    clock = FakeClock(T0)
    window = timedelta(minutes=5)
    engine = StageEngine(db, load_rules(), NoPublisher(), topics.stage_changes, clock, dedup_window=window)
    per_minute = 400
    sizes = []
    for _ in range(20):  # 8,000 messages, at most 5-6 minutes' worth remembered
        batch = [touchpoint("Product Viewed", customer=f"c{i % 50}", at=clock.now) for i in range(per_minute)]
        await engine.handle([Consumed("t", 0, n, None, tp, 0) for n, tp in enumerate(batch)])
        clock.now += timedelta(minutes=1)
        sizes.append(int(str(await scalar(db, "SELECT count(*) FROM processed_messages"))))
    assert max(sizes) <= 6 * per_minute
    assert sizes[-1] == sizes[-5]  # level, not growing


async def test_revision_0006_keeps_json_states_which_the_engine_reads_and_writes_back_packed(
    settings: Settings, topics: Topics, db: AsyncEngine
) -> None:
    schema = service_schema(settings, "stage-engine")
    await apply_migrations(db, script_location=MIGRATIONS, schema=schema, revision="0005")
    legacy = {"customer_id": "u1", "stage": "engagement", "health": "active", "signal_counts": {"engaged": 3}}
    async with db.begin() as conn:
        await conn.execute(
            text("INSERT INTO customers (customer_id, stage, health, state) VALUES ('u1', 'engagement', 'active', :s)"),
            {"s": orjson.dumps(legacy).decode()},
        )
    await apply_migrations(db, script_location=MIGRATIONS, schema=schema)
    assert await scalar(db, "SELECT reloptions FROM pg_class WHERE oid = 'customers'::regclass") == ["fillfactor=70"]

    engine = StageEngine(db, load_rules(), NoPublisher(), topics.stage_changes, FakeClock(T0))
    order = touchpoint("Order Completed", customer="u1", revenue=30.0)
    await engine.handle([Consumed("t", 0, 0, None, order, 0)])
    async with db.connect() as conn:
        stored = (await conn.execute(text("SELECT state FROM customers WHERE customer_id = 'u1'"))).scalar_one()
    assert stored[:1] != b"{"  # written back as MessagePack
    state = load_state(stored)
    assert state.stage is Stage.CONVERSION
    assert state.signal_counts["engaged"] == 3  # what the JSON row held is kept


async def test_activity_moves_no_timer_later_and_an_early_timer_is_set_exactly_when_it_fires(
    settings: Settings, topics: Topics, db: AsyncEngine
) -> None:
    await apply_migrations(db, script_location=MIGRATIONS, schema=service_schema(settings, "stage-engine"))
    rules = load_rules()
    clock = FakeClock(T0)
    engine = StageEngine(db, rules, NoPublisher(), topics.stage_changes, clock)

    async def timer() -> object:
        return await scalar(db, "SELECT due_at FROM timers WHERE timer_id = 'u1'")

    first = touchpoint("Order Completed", customer="u1", at=T0, revenue=30.0)
    await engine.handle([Consumed("t", 0, 0, None, first, 0)])
    assert await timer() == T0 + rules.health.at_risk_after
    later = touchpoint("Email Opened", customer="u1", at=T0 + timedelta(days=10))
    await engine.handle([Consumed("t", 0, 1, None, later, 0)])
    assert await timer() == T0 + rules.health.at_risk_after  # not moved: it may fire early

    clock.now = T0 + rules.health.at_risk_after
    assert await engine.fire_timers() == 1  # early: nothing to do but set it exactly
    assert (await engine_customer(db)).health is Health.ACTIVE
    assert await timer() == T0 + timedelta(days=10) + rules.health.at_risk_after
    clock.now = T0 + timedelta(days=10) + rules.health.at_risk_after
    assert await engine.fire_timers() == 1
    assert (await engine_customer(db)).health is Health.AT_RISK
    assert await timer() == T0 + timedelta(days=10) + rules.health.churned_after


async def engine_customer(db: AsyncEngine) -> CustomerState:
    async with db.connect() as conn:
        stored = (await conn.execute(text("SELECT state FROM customers WHERE customer_id = 'u1'"))).scalar_one()
    return load_state(stored)
