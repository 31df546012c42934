"""Rebuild, two instances, poison records and identity merges on the real broker and database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from clm_shared.cloudevents import decode
from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import ensure_topics
from clm_shared.kafka.consumer import ERROR_HEADER
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonSerializer
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from stage_engine.app import create_app
from stage_engine.memory import InMemoryEngine
from stage_engine.rebuild import RebuildRefused, rebuild
from stage_engine.rules import load_rules
from tests.integration.stage_engine.test_stage_engine import T0
from tests.utils.clock import FakeClock
from tests.utils.engine_state import processed_count, snapshot
from tests.utils.factories import touchpoint
from tests.utils.kafka import read_records
from tests.utils.tokens import bearer, create_api_token
from tests.waiting import wait_for

serialize = JsonSerializer()


@asynccontextmanager
async def running_engine(settings: Settings, clock: FakeClock) -> AsyncIterator[FastAPI]:
    app = create_app(settings.model_copy(update={"stage_engine_timer_interval_s": 0.1}), clock=clock)
    async with app.router.lifespan_context(app):
        yield app


async def publish(settings: Settings, topics: Topics, touchpoints: list[Touchpoint]) -> None:
    publisher = Publisher(settings.kafka_bootstrap, client_id="test")
    try:
        await publisher.publish_many(
            [OutgoingRecord(topics.touchpoints, serialize(tp), key=tp.customer_key.encode()) for tp in touchpoints]
        )
    finally:
        await publisher.stop()


def story(prefix: str = "") -> list[Touchpoint]:
    """A few customers through every stage, health moves and an anonymous profile merged by alias."""
    day = timedelta(days=1)
    events = [
        touchpoint("Ad Impression", customer=f"{prefix}anon-a", at=T0),
        touchpoint("Product Viewed", customer=f"{prefix}anon-a", at=T0 + day),
        touchpoint("Order Completed", customer=f"{prefix}anon-a", at=T0 + 2 * day, revenue=300),
        touchpoint("Signed Up", customer=f"{prefix}u-a", at=T0 + 3 * day),
        touchpoint(None, customer=f"{prefix}u-a", call_type="alias", previous_id=f"{prefix}anon-a", at=T0 + 4 * day),
        touchpoint("Order Completed", customer=f"{prefix}u-a", at=T0 + 5 * day, revenue=250),
        touchpoint("Review Submitted", customer=f"{prefix}u-a", at=T0 + 6 * day, rating=5),
    ]
    for i in range(6):
        events += [
            touchpoint("Order Completed", customer=f"{prefix}u{i}", at=T0 + i * day, revenue=10 * (i + 1)),
            touchpoint("Email Opened", customer=f"{prefix}u{i}", at=T0 + (10 + i) * day),
        ]
        if i % 2:
            events.append(touchpoint("Order Completed", customer=f"{prefix}u{i}", at=T0 + 200 * day, revenue=5))
    return events


async def test_rebuild_gives_the_same_stages_health_and_history(settings: Settings, namespace: str) -> None:
    # One partition: with several, where an anonymous customer's events are recorded relative to a
    # merge depends on how the live engine interleaved the partitions, which no replay can know.
    topics = Topics(namespace)
    await ensure_topics(settings.kafka_bootstrap, {name: 1 for name in topics.all()})
    events = story()
    clock = FakeClock(T0 + timedelta(days=300))
    await publish(settings, topics, events)
    async with running_engine(settings, clock):
        await wait_for(lambda: _is(processed_count(settings), len(events)), what="every touchpoint applied")

        async def settled() -> bool:
            state = await snapshot(settings, clock.now)
            return bool(state["outbox"] == 0 and state["due_timers"] == 0)

        await wait_for(settled, what="every due timer fired and the outbox drained")
    live = await snapshot(settings, clock.now)
    report = await rebuild(settings, clock=clock)
    rebuilt = await snapshot(settings, clock.now)
    assert report.touchpoints == len(events)
    # Timer moves due at the end wait in the outbox again (same ids): the engine publishes them on start.
    assert {k: v for k, v in rebuilt.items() if k != "outbox"} == {k: v for k, v in live.items() if k != "outbox"}
    assert any(h[3] == "merge" for h in live["history"])
    assert {h[5] for h in live["history"] if h[3] == "health"} >= {"at_risk", "churned", "reactivated"}


async def _is(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def test_two_instances_in_one_group_end_where_one_instance_does(settings: Settings, topics: Topics) -> None:
    events = [tp for prefix in ("x", "y", "z") for tp in story(prefix)]
    clock = FakeClock(T0 + timedelta(days=1))
    async with running_engine(settings, clock) as one, running_engine(settings, clock) as two:
        await asyncio.gather(*(app.state.consumer.assigned.wait() for app in (one, two)))
        await publish(settings, topics, events)
        await wait_for(lambda: _is(processed_count(settings), len(events)), what="every touchpoint applied")
    reference = InMemoryEngine(load_rules())
    reference.process(events)
    state = await snapshot(settings)
    assert {cid: (c["stage"], c["signal_counts"]) for cid, c in state["customers"].items()} == {
        cid: (c.stage, c.signal_counts) for cid, c in reference.customers.items()
    }
    assert state["identities"] == reference.identities


async def test_an_undecodable_touchpoint_goes_to_the_dlq_and_the_engine_carries_on(
    settings: Settings, topics: Topics
) -> None:
    publisher = Publisher(settings.kafka_bootstrap, client_id="test")
    await publisher.publish(OutgoingRecord(topics.touchpoints, b'{"message_id": 1}', key=b"u1"))
    await publisher.stop()
    await publish(settings, topics, [touchpoint("Signed Up", customer="u1")])
    async with running_engine(settings, FakeClock(T0)) as app:
        transport = httpx.ASGITransport(app=app)
        headers = bearer(await create_api_token(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine", headers=headers) as client:

            async def engaged() -> bool:
                answer = await client.get("/v1/customers/u1")
                return answer.status_code == 200 and answer.json()["stage"] == "engagement"

            await wait_for(engaged, what="the good record applied")
    (dead,) = await read_records(settings.kafka_bootstrap, topics.touchpoints_dlq, 1)
    assert dict(dead.headers)[ERROR_HEADER].startswith(b"decode: invalid Touchpoint")


async def test_identify_with_both_ids_merges_profiles_and_publishes_the_merge(
    settings: Settings, topics: Topics
) -> None:
    anon = [touchpoint("Product Viewed", customer="anon-9", at=T0), touchpoint("Signed Up", customer="anon-9", at=T0)]
    identify = touchpoint(
        None,
        customer="u9",
        call_type="identify",
        anonymous_id="anon-9",
        traits={"email": "z@example.com"},
        at=T0 + timedelta(hours=1),
    )
    await publish(settings, topics, [*anon, identify])
    async with running_engine(settings, FakeClock(T0)) as app:
        transport = httpx.ASGITransport(app=app)
        headers = bearer(await create_api_token(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine", headers=headers) as client:

            async def merged() -> bool:
                answer = await client.get("/v1/customers/anon-9")
                return answer.status_code == 200 and answer.json()["customer_id"] == "u9"

            await wait_for(merged, what="anon-9 merged into u9")
            customer = (await client.get("/v1/customers/u9")).json()
    assert customer["known_ids"] == ["anon-9", "u9"]
    assert customer["stage"] == "engagement" and customer["traits"] == {"email": "z@example.com"}
    records = await read_records(settings.kafka_bootstrap, topics.stage_changes, 3)
    types = [decode(r.value).type for r in records]
    assert "clm.customer.merged" in types
    merge = next(decode(r.value) for r in records if decode(r.value).type == "clm.customer.merged")
    assert (merge.subject, merge.data["merged_id"]) == ("u9", "anon-9")


async def test_after_a_chain_of_merges_an_old_anonymous_id_lands_on_the_final_customer(
    settings: Settings, topics: Topics
) -> None:
    day = timedelta(days=1)
    first = [
        touchpoint("Product Viewed", customer="anon-c", at=T0),
        touchpoint(None, customer="u-c1", call_type="identify", anonymous_id="anon-c", at=T0 + day),
    ]
    later = [
        touchpoint(None, customer="u-c2", call_type="alias", previous_id="u-c1", at=T0 + 2 * day),
    ]
    last = [touchpoint("Order Completed", customer="anon-c", at=T0 + 3 * day, revenue=10)]
    async with running_engine(settings, FakeClock(T0)) as app:
        transport = httpx.ASGITransport(app=app)
        headers = bearer(await create_api_token(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine", headers=headers) as client:
            for step, events in enumerate((first, later, last), start=1):
                await publish(settings, topics, events)
                expected = sum(len(group) for group in (first, later, last)[:step])

                async def applied(n: int = expected) -> bool:
                    return await processed_count(settings) == n

                await wait_for(applied, what=f"step {step}")
            customer = (await client.get("/v1/customers/anon-c")).json()
    assert customer["customer_id"] == "u-c2"
    assert customer["stage"] == "conversion"
    assert sorted(customer["known_ids"]) == ["anon-c", "u-c1", "u-c2"]
    assert set((await snapshot(settings))["customers"]) == {"u-c2"}


async def test_rebuild_keeps_erased_customers_erased_and_refuses_an_undrained_outbox(
    settings: Settings, topics: Topics
) -> None:
    await publish(
        settings, topics, [touchpoint("Signed Up", customer="keep"), touchpoint("Signed Up", customer="gone")]
    )
    clock = FakeClock(T0)
    async with running_engine(settings, clock) as app:
        await wait_for(lambda: _is(processed_count(settings), 2), what="both applied")
        transport = httpx.ASGITransport(app=app)
        headers = bearer(await create_api_token(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine", headers=headers) as client:
            assert (await client.delete("/v1/customers/gone")).status_code == 204

        async def drained() -> bool:
            return bool((await snapshot(settings))["outbox"] == 0)

        await wait_for(drained, what="the erasure published")
    report = await rebuild(settings, clock=clock)
    assert report.erased_skipped == 1
    assert set((await snapshot(settings))["customers"]) == {"keep"}

    engine = create_engine(settings.database_url, schema=service_schema(settings, "stage-engine"), pool_size=1)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO outbox (topic, key, value) VALUES ('t', 'k', 'v')"))
    await engine.dispose()
    with pytest.raises(RebuildRefused, match="unpublished"):
        await rebuild(settings, clock=clock)


async def test_message_ids_are_forgotten_after_the_dedup_window(settings: Settings, topics: Topics) -> None:
    from datetime import UTC, datetime

    await publish(settings, topics, [touchpoint("Signed Up", customer="w1"), touchpoint("Signed Up", customer="w2")])
    clock = FakeClock(datetime.now(UTC))
    async with running_engine(settings, clock) as app:
        await wait_for(lambda: _is(processed_count(settings), 2), what="both applied")
        assert await app.state.engine.forget_old_messages() == 0
        clock.now = datetime.now(UTC) + timedelta(days=31)
        assert await app.state.engine.forget_old_messages() == 2
    assert await processed_count(settings) == 0
