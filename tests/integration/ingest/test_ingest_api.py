"""The ingest API in-process (ASGI, with its lifespan) against the real broker and database."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from clm_cli.infra.kafka import KafkaServer
from clm_cli.infra.process import two_free_ports
from clm_shared.categories import Category
from clm_shared.kafka.admin import ensure_topics
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from ingest.app import create_app
from ingest.keys import create_key, revoke_key
from tests.infra import ROOT
from tests.utils.factories import track_call
from tests.utils.kafka import read_touchpoints, topic_size
from tests.waiting import wait_for


class Ingest:
    def __init__(self, client: httpx.AsyncClient, key: str, app: Any) -> None:
        self.client, self.key, self.app = client, key, app

    async def post(self, endpoint: str, body: dict[str, Any] | bytes, **kwargs: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        kwargs.setdefault("auth", (self.key, ""))
        return await self.client.post(f"/v1/{endpoint}", content=content, **kwargs)


@pytest.fixture
async def ingest(settings: Settings, topics: Topics) -> AsyncIterator[Ingest]:
    app = create_app(settings.model_copy(update={"ingest_publish_timeout_s": 2.0}))
    async with app.router.lifespan_context(app):
        key = await create_key(app.state.ctx.engine, name="shop-web")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield Ingest(client, key, app)


CALLS: dict[str, dict[str, Any]] = {
    "track": track_call("Order Completed", properties={"revenue": 30}),
    "identify": {"userId": "user-1", "traits": {"email": "ada@example.com"}},
    "page": {"anonymousId": "anon-1", "name": "Pricing", "properties": {"url": "https://shop/pricing"}},
    "screen": {"userId": "user-1", "name": "Home"},
    "group": {"userId": "user-1", "groupId": "acme", "traits": {"plan": "team"}},
    "alias": {"userId": "user-1", "previousId": "anon-1"},
}
CATEGORY = {
    "track": Category.CONVERSION,
    "identify": Category.IDENTITY,
    "page": Category.DISCOVERY,
    "screen": Category.DISCOVERY,
    "group": Category.IDENTITY,
    "alias": Category.IDENTITY,
}


@pytest.mark.parametrize("endpoint", list(CALLS))
async def test_each_call_becomes_one_touchpoint_keyed_by_customer(
    ingest: Ingest, topics: Topics, kafka_bootstrap: str, endpoint: str
) -> None:
    answer = await ingest.post(endpoint, {**CALLS[endpoint], "messageId": f"m-{endpoint}"})
    assert (answer.status_code, answer.json()) == (200, {"success": True})
    (tp,) = await read_touchpoints(kafka_bootstrap, topics.touchpoints, 1)
    assert (tp.type, tp.message_id, tp.category, tp.source) == (
        endpoint,
        f"m-{endpoint}",
        CATEGORY[endpoint],
        "shop-web",
    )
    assert tp.customer_key == (CALLS[endpoint].get("userId") or CALLS[endpoint]["anonymousId"])


async def test_a_batch_publishes_every_call_and_gzip_is_understood(
    ingest: Ingest, topics: Topics, kafka_bootstrap: str
) -> None:
    batch = {"batch": [{**call, "type": kind} for kind, call in CALLS.items()], "context": {"ip": "10.0.0.1"}}
    answer = await ingest.post("batch", gzip.compress(orjson.dumps(batch)), headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.text
    published = await read_touchpoints(kafka_bootstrap, topics.touchpoints, 6)
    assert sorted(tp.type for tp in published) == sorted(CALLS)
    assert all(tp.context.get("ip") == "10.0.0.1" for tp in published)


async def test_refused_requests_publish_nothing(ingest: Ingest, topics: Topics, kafka_bootstrap: str) -> None:
    bad_batch = {"batch": [track_call(), {"type": "track", "userId": "u"}]}
    cases: list[tuple[str, bytes | dict[str, Any], dict[str, Any], int]] = [
        ("track", b"{not json", {}, 400),
        ("track", b"\x1f\x8b garbage", {"headers": {"Content-Encoding": "gzip"}}, 400),
        ("track", track_call(), {"auth": None}, 401),
        ("track", track_call(), {"auth": ("clmwk_unknown", "")}, 401),
        ("track", track_call(properties={"blob": "x" * 40_000}), {}, 413),
        ("batch", {"batch": [track_call(properties={"p": "x" * 20_000})] * 30}, {}, 413),
        ("batch", bad_batch, {}, 422),
        ("track", track_call(messageId="x" * 100), {}, 422),
    ]
    for endpoint, body, kwargs, status in cases:
        answer = await ingest.post(endpoint, body, **kwargs)
        assert answer.status_code == status, (endpoint, status, answer.text)
        assert answer.json()["success"] is False
    refusal = (await ingest.post("batch", bad_batch)).json()
    assert refusal["errors"] == [{"index": 1, "type": "track", "field": "event", "message": "Field required"}]
    await ingest.post("track", track_call("Sentinel"))
    assert await topic_size(kafka_bootstrap, topics.touchpoints) == 1
    (tp,) = await read_touchpoints(kafka_bootstrap, topics.touchpoints, 1)
    assert tp.event == "Sentinel"


async def test_a_write_key_in_the_body_is_accepted(ingest: Ingest, topics: Topics, kafka_bootstrap: str) -> None:
    answer = await ingest.post("track", {**track_call(), "writeKey": ingest.key}, auth=None)
    assert answer.status_code == 200
    assert len(await read_touchpoints(kafka_bootstrap, topics.touchpoints, 1)) == 1


async def test_a_revoked_key_is_refused_within_10_seconds(ingest: Ingest) -> None:
    assert (await ingest.post("track", track_call())).status_code == 200
    await revoke_key(ingest.app.state.ctx.engine, name="shop-web")
    revoked_at = time.monotonic()

    async def refused() -> bool:
        return (await ingest.post("track", track_call())).status_code == 401

    await wait_for(refused, timeout_s=10, what="the revoked key to be refused")
    assert time.monotonic() - revoked_at <= 10


async def test_a_duplicate_message_id_passes_through_unchanged(
    ingest: Ingest, topics: Topics, kafka_bootstrap: str
) -> None:
    call = track_call(messageId="same-id")
    for _ in range(2):
        assert (await ingest.post("track", call)).status_code == 200
    published = await read_touchpoints(kafka_bootstrap, topics.touchpoints, 2)
    assert [tp.message_id for tp in published] == ["same-id", "same-id"]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_prometheus_counts_accepted_and_rejected_events(ingest: Ingest) -> None:
    accepted, malformed = (
        sample("clm_ingest_events_accepted_total", type="batch"),
        sample("clm_ingest_events_rejected_total", reason="malformed"),
    )
    await ingest.post("batch", {"batch": [track_call(), track_call()]})
    await ingest.post("track", b"{")
    assert sample("clm_ingest_events_accepted_total", type="batch") == accepted + 2
    assert sample("clm_ingest_events_rejected_total", reason="malformed") == malformed + 1
    text = (await ingest.client.get("/metrics")).text
    assert "clm_ingest_request_seconds_bucket" in text and "clm_ingest_publish_seconds_bucket" in text


async def test_openapi_describes_every_endpoint_with_its_body(ingest: Ingest) -> None:
    spec = (await ingest.client.get("/openapi.json")).json()
    for endpoint in [*CALLS, "batch"]:
        operation = spec["paths"][f"/v1/{endpoint}"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[1] in spec["components"]["schemas"]
        assert {"200", "401", "413", "422", "503"} <= set(operation["responses"])
    assert (await ingest.client.get("/docs")).status_code == 200


async def test_broker_down_gives_503_quickly_and_the_same_request_succeeds_once_it_is_back(
    settings: Settings, database_url: str
) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="clm-test-outage-"))
    broker = KafkaServer(cache_dir=ROOT / ".cache", data_dir=scratch, port=two_free_ports(), heap_mb=256)
    broker.start()
    try:
        await asyncio.to_thread(broker.wait_ready)
        topics = Topics(settings.topic_namespace)
        await ensure_topics(broker.bootstrap, {name: 1 for name in topics.all()})
        app = create_app(
            settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "ingest_publish_timeout_s": 2.0})
        )
        async with app.router.lifespan_context(app):
            key = await create_key(app.state.ctx.engine, name="outage")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest", auth=(key, "")) as client:
                call = orjson.dumps(track_call(messageId="during-outage"))
                assert (await client.post("/v1/track", content=b'{"userId":"u","event":"Before"}')).status_code == 200

                await asyncio.to_thread(broker.stop)
                started = time.monotonic()
                answer = await client.post("/v1/track", content=call)
                assert answer.status_code == 503
                assert time.monotonic() - started < 5
                assert int(answer.headers["Retry-After"]) >= 1

                broker.start()
                await asyncio.to_thread(broker.wait_ready)

                async def accepted() -> bool:
                    return (await client.post("/v1/track", content=call)).status_code == 200

                await wait_for(accepted, timeout_s=60, what="ingest to accept again")
        published = await read_touchpoints(broker.bootstrap, topics.touchpoints, 2)
        assert "during-outage" in {tp.message_id for tp in published}
    finally:
        broker.stop()
        shutil.rmtree(scratch, ignore_errors=True)


async def test_without_a_key_nothing_is_validated_before_the_401(ingest: Ingest) -> None:
    for body in (b"{not json", orjson.dumps({"event": "No Ids"}), orjson.dumps({"batch": "nope"})):
        assert (await ingest.post("track", body, auth=None)).status_code == 401
    invalid_with_body_key = {"writeKey": ingest.key, "event": "No Ids"}
    assert (await ingest.post("track", invalid_with_body_key, auth=None)).status_code == 422


async def test_a_chunked_body_without_a_length_is_still_held_to_the_limit(ingest: Ingest) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"userId": "u", "event": "Big", "properties": {"blob": "'
        for _ in range(60):
            yield b"x" * 10_000
        yield b'"}}'

    answer = await ingest.client.post("/v1/track", content=chunks(), auth=(ingest.key, ""))
    assert answer.status_code == 413
