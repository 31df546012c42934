"""The stage engine in-process against the real broker and database, fed through the ingest API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from clm_shared.cloudevents import decode
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from ingest.app import create_app as create_ingest
from ingest.keys import create_key
from stage_engine.app import create_app as create_engine_app
from tests.utils.clock import FakeClock
from tests.utils.kafka import read_records
from tests.utils.tokens import bearer, create_api_token
from tests.waiting import wait_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Platform:
    ingest: httpx.AsyncClient
    engine: httpx.AsyncClient
    clock: FakeClock
    settings: Settings
    topics: Topics

    async def track(self, user: str, event: str, day: float, **properties: Any) -> None:
        body = {
            "userId": user,
            "event": event,
            "properties": properties,
            "timestamp": (T0 + timedelta(days=day)).isoformat(),
        }
        answer = await self.ingest.post("/v1/track", content=orjson.dumps(body))
        assert answer.status_code == 200, answer.text

    async def customer(self, customer_id: str) -> dict[str, Any] | None:
        answer = await self.engine.get(f"/v1/customers/{customer_id}")
        return answer.json() if answer.status_code == 200 else None

    async def stage_of(self, customer_id: str) -> str | None:
        found = await self.customer(customer_id)
        return found["stage"] if found else None


@pytest.fixture
async def platform(settings: Settings, topics: Topics) -> AsyncIterator[Platform]:
    clock = FakeClock(T0 + timedelta(days=1))
    fast = settings.model_copy(update={"stage_engine_timer_interval_s": 0.1})
    ingest_app, engine_app = create_ingest(fast), create_engine_app(fast, clock=clock)
    async with ingest_app.router.lifespan_context(ingest_app), engine_app.router.lifespan_context(engine_app):
        key = await create_key(ingest_app.state.ctx.engine, name="test")
        token = await create_api_token(engine_app)
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=ingest_app), base_url="http://ingest", auth=(key, "")
            ) as ingest,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=engine_app), base_url="http://engine", headers=bearer(token)
            ) as engine,
        ):
            yield Platform(ingest, engine, clock, fast, topics)


async def test_events_posted_to_ingest_end_as_stages_and_as_changes_on_the_topic(platform: Platform) -> None:
    await platform.track("u1", "Ad Impression", 0)
    await platform.track("u1", "Signed Up", 1)
    await platform.track("u1", "Order Completed", 2, revenue=40)
    await platform.track("u1", "Order Completed", 3, revenue=20)

    async def retained() -> bool:
        return await platform.stage_of("u1") == "retention"

    await wait_for(retained, what="u1 in retention")
    records = await read_records(platform.settings.kafka_bootstrap, platform.topics.stage_changes, 4)
    events = [decode(r.value) for r in records]
    assert [e.data["to_stage"] for e in events] == ["discovery", "engagement", "conversion", "retention"]
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert {e.subject for e in events} == {"u1"} and all(r.key == b"u1" for r in records)
    assert len({e.id for e in events}) == 4
    customer = await platform.customer("u1")
    assert customer is not None
    assert [h["event_id"] for h in customer["history"]] == [e.id for e in events]
    assert customer["counters"]["paid_order"] == 2


async def test_inactivity_timers_fire_on_the_engines_clock(platform: Platform) -> None:
    await platform.track("u2", "Order Completed", 0, revenue=10)

    async def converted() -> bool:
        return await platform.stage_of("u2") == "conversion"

    await wait_for(converted, what="u2 converted")
    platform.clock.now = T0 + timedelta(days=61)

    async def at_risk() -> bool:
        found = await platform.customer("u2")
        return found is not None and found["health"] == "at_risk"

    await wait_for(at_risk, what="u2 at risk")


async def test_segments_are_listed_in_keyset_pages_and_bad_filters_are_400(platform: Platform) -> None:
    for i in range(5):
        await platform.track(f"c{i}", "Signed Up", 0)

    async def all_engaged() -> bool:
        page = (await platform.engine.get("/v1/customers", params={"stage": "engagement"})).json()
        return len(page["items"]) == 5

    await wait_for(all_engaged, what="five engaged customers")
    first = (await platform.engine.get("/v1/customers", params={"stage": "engagement", "limit": 2})).json()
    second = (
        await platform.engine.get(
            "/v1/customers", params={"stage": "engagement", "limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    third = (
        await platform.engine.get(
            "/v1/customers", params={"stage": "engagement", "limit": 2, "cursor": second["next_cursor"]}
        )
    ).json()
    ids = [c["customer_id"] for page in (first, second, third) for c in page["items"]]
    assert ids == ["c0", "c1", "c2", "c3", "c4"] and third["next_cursor"] is None
    assert (await platform.engine.get("/v1/customers", params={"stage": "famous"})).status_code == 400
    assert (await platform.engine.get("/v1/customers", params={"health": "sleepy"})).status_code == 400
    assert (await platform.engine.get("/v1/customers/nobody")).status_code == 404


async def test_erasing_a_customer_removes_them_and_publishes_erased(platform: Platform) -> None:
    await platform.track("gone", "Signed Up", 0)

    async def known() -> bool:
        return await platform.customer("gone") is not None

    await wait_for(known, what="customer recorded")
    assert (await platform.engine.delete("/v1/customers/gone")).status_code == 204
    assert await platform.customer("gone") is None
    assert (await platform.engine.delete("/v1/customers/gone")).status_code == 404
    records = await read_records(platform.settings.kafka_bootstrap, platform.topics.stage_changes, 3)
    assert [decode(r.value).type for r in records][-1] == "clm.customer.erased"


async def test_an_erased_customer_who_comes_back_starts_a_fresh_profile(platform: Platform) -> None:
    await platform.track("back", "Signed Up", 0)

    async def engaged() -> bool:
        return await platform.stage_of("back") == "engagement"

    await wait_for(engaged, what="first profile")
    first = await platform.customer("back")
    assert (await platform.engine.delete("/v1/customers/back")).status_code == 204
    await platform.track("back", "Ad Impression", 5)

    async def rediscovered() -> bool:
        return await platform.stage_of("back") == "discovery"

    await wait_for(rediscovered, what="a fresh profile")
    second = await platform.customer("back")
    assert first is not None and second is not None
    assert {h["event_id"] for h in first["history"]}.isdisjoint(h["event_id"] for h in second["history"])


HOSTILE_IDS = [
    "'; DROP TABLE customers; --",
    "<script>alert(1)</script>",
    "tab\tnew\nline\rbell\x07esc\x1b[31m",
    "\u202eevil\u200f mixed \u05e9\u05dc\u05d5\u05dd",
    "\U0001f600" * 40 + "ü" * 100,
]


async def test_hostile_customer_ids_are_stored_and_answered_verbatim(platform: Platform) -> None:
    """SQL, markup, control characters, direction marks and long unicode: data, never code or a broken answer."""
    for user in HOSTILE_IDS:
        await platform.track(user, "Signed Up", 0)

    async def all_engaged() -> bool:
        for user in HOSTILE_IDS:
            answer = await platform.engine.get("/v1/customers/" + quote(user, safe=""))
            if answer.status_code != 200 or answer.json()["stage"] != "engagement":
                return False
        return True

    await wait_for(all_engaged, what="every hostile customer engaged")
    for user in HOSTILE_IDS:
        answer = await platform.engine.get("/v1/customers/" + quote(user, safe=""))
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json()["customer_id"] == user
    listed = await platform.engine.get("/v1/customers", params={"stage": "engagement"})
    assert set(HOSTILE_IDS) <= {c["customer_id"] for c in listed.json()["items"]}
    records = await read_records(platform.settings.kafka_bootstrap, platform.topics.stage_changes, 2 * len(HOSTILE_IDS))
    assert {decode(r.value).subject for r in records} == set(HOSTILE_IDS)
