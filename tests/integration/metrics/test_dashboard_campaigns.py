"""``/v1/dashboard/campaigns``: metrics asks the real campaigns API over HTTP, and survives it being away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from campaigns.app import create_app as create_campaigns
from clm_cli.infra.process import free_port
from clm_shared.access.tokens import Role
from clm_shared.db import create_engine, service_schema
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from clm_shared.transactions import transaction
from metrics.app import create_app as create_metrics
from tests.utils.serving import served
from tests.utils.tokens import bearer, create_api_token


@asynccontextmanager
async def metrics_client(settings: Settings, campaigns_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The metrics app in-process, pointed at ``campaigns_url``, and a client with a read token."""
    app = create_metrics(settings.model_copy(update={"campaigns_url": campaigns_url}))
    async with app.router.lifespan_context(app):
        token = await create_api_token(app, Role.READ)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m", headers=bearer(token)
        ) as client:
            yield client, app


async def test_the_dashboard_gets_sent_converted_and_uplift_from_the_campaigns_service(
    settings: Settings, topics: Topics
) -> None:
    campaigns_app = create_campaigns(settings)
    with served(campaigns_app, "campaigns") as campaigns_url:
        # Both services share the test's access schema, so metrics' read token is one campaigns accepts.
        async with metrics_client(settings, campaigns_url) as (metrics, metrics_app):
            # Created before campaigns first looks tokens up: it reloads on an unknown one at most once a second.
            admin = bearer(await create_api_token(metrics_app, Role.ADMIN))
            engine = create_engine(settings.database_url, schema=service_schema(settings, "campaigns"), pool_size=1)
            async with transaction(engine) as db:  # from no campaigns, not the shipped ones
                await db.execute("DELETE FROM campaigns; DELETE FROM campaign_versions")
            assert (await metrics.get("/v1/dashboard/campaigns")).json() == {"available": True, "items": []}
            async with httpx.AsyncClient(base_url=campaigns_url, headers=admin) as campaigns:
                for campaign_id in ("welcome", "winback"):
                    answer = await campaigns.post("/v1/campaigns", json=campaign(campaign_id))
                    assert answer.status_code == 201, answer.text
            try:
                async with transaction(engine) as db:
                    await db.executemany(
                        "INSERT INTO campaign_counts (campaign_id, counter, count) VALUES ($1, $2, $3)",
                        [("welcome", "entered", 220), ("welcome", "holdout", 20), ("welcome", "sent", 300),
                         ("welcome", "converted", 40), ("welcome", "treatment_converted", 40),
                         ("welcome", "holdout_converted", 1), ("winback", "sent", 3)],
                    )  # fmt: skip
            finally:
                await engine.dispose()

            answer = await metrics.get("/v1/dashboard/campaigns")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["available"] is True
    welcome, winback = body["items"]
    # Treatment 200, 40 converted (20%); holdout 1 of 20 (5%): uplift 15 points.
    assert (welcome["campaign_id"], welcome["sent"], welcome["converted"]) == ("welcome", 300, 40)
    assert welcome["conversion_rate"] == pytest.approx(0.2) and welcome["uplift"] == pytest.approx(0.15)
    assert (winback["campaign_id"], winback["sent"], winback["uplift"]) == ("winback", 3, None)


def campaign(campaign_id: str) -> dict[str, object]:
    return {
        "id": campaign_id,
        "name": campaign_id.title(),
        "trigger": {"event": "Signed Up"},
        "steps": [{"type": "send", "name": "hello", "channel": "webhook", "url": "https://crm.test/hook"}],
    }


@asynccontextmanager
async def stub(response: bytes | None) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A bare HTTP server answering ``response`` to every request (or never answering), recording the requests."""
    seen: list[bytes] = []
    never = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        if response is None:
            await never.wait()
        writer.write(response or b"")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        never.set()
        server.close()
        await server.wait_closed()


def http(status: str, body: bytes) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize(
    "response",
    [
        http("401 Unauthorized", b'{"detail": "unknown or revoked API token"}'),
        http("500 Internal Server Error", b"oops"),
        http("200 OK", b"not json"),
        http("200 OK", b'{"items": [{"campaign_id": "x"}]}'),
        None,  # accepts the connection and never answers
    ],
    ids=["refused", "error", "not-json", "wrong-shape", "silent"],
)
async def test_a_campaigns_service_that_does_not_answer_well_leaves_the_dashboard_working(
    settings: Settings, topics: Topics, response: bytes | None
) -> None:
    async with stub(response) as (url, seen), metrics_client(settings, url) as (metrics, _):
        started = time.monotonic()
        answer = await metrics.get("/v1/dashboard/campaigns")
        elapsed = time.monotonic() - started
        token = metrics.headers["Authorization"]
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"available": False, "items": []}
    assert elapsed < 6, "the call to campaigns must time out after about 3 s"
    # The caller's own token went along, and nowhere else.
    assert len(seen) == 1 and seen[0].startswith(b"GET /v1/campaign-stats ")
    assert f"authorization: {token}".lower().encode() in seen[0].lower()


async def test_no_campaigns_service_at_all(settings: Settings, topics: Topics) -> None:
    async with metrics_client(settings, f"http://127.0.0.1:{free_port()}") as (metrics, _):
        answer = await metrics.get("/v1/dashboard/campaigns")
        assert answer.status_code == 200 and answer.json() == {"available": False, "items": []}
        assert (await metrics.get("/v1/dashboard/campaigns", headers={"Authorization": ""})).status_code == 401
