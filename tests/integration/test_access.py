"""Every protected route of every service, walked from ``app.routes``, refuses what it must (real PostgreSQL)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from pydantic import SecretStr

from clm_shared.access.tokens import Role, access_engine, revoke_token
from clm_shared.db import create_engine, service_schema
from clm_shared.migrations import apply_migrations
from clm_shared.service import create_service_app
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from ingest.app import MIGRATIONS as INGEST_MIGRATIONS
from ingest.keys import create_key
from ingest.requests import ENDPOINTS
from metrics.app import MIGRATIONS as METRICS_MIGRATIONS
from tests.utils.factories import track_call
from tests.utils.tokens import bearer, create_api_token
from tests.waiting import wait_for

# Open on purpose: operations, and the API's description (it holds no data; the routes it lists need tokens).
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# The dashboard's page and static files hold no data: a browser cannot send a token when it
# navigates, so they are open and the page's script sends the token with every API call.
OPEN_PATHS |= {"/dashboard", "/dashboard/static/{file}"}
# The one-click unsubscribe link in campaign email: the customer has no token, the signed link is the proof.
OPEN_PATHS |= {"/v1/unsubscribe/{token}"}
TRACKING_PATHS = {f"/v1/{endpoint}" for endpoint in ENDPOINTS}
READ_METHODS = {"GET", "HEAD"}


def app_factories() -> dict[str, Callable[[Settings], FastAPI]]:
    from campaigns.app import create_app as campaigns
    from ingest.app import create_app as ingest
    from metrics.app import create_app as metrics
    from stage_engine.app import create_app as stage_engine

    return {"ingest": ingest, "stage-engine": stage_engine, "metrics": metrics, "campaigns": campaigns}


def protected_requests(app: FastAPI, *, tracking_is_open: bool) -> list[tuple[str, str]]:
    """(method, url) of every route that must take an API token, path parameters filled in."""
    requests: list[tuple[str, str]] = []
    # Included routers are resolved lazily by FastAPI; this walks their effective routes (prefix included).
    for route in iter_route_contexts(app.routes):
        # A Mount or any route without methods would hide paths from this walk: none may exist unseen.
        assert route.path and route.methods, f"unexpected route {route.original_route!r}"
        if route.path in OPEN_PATHS or (tracking_is_open and route.path in TRACKING_PATHS):
            continue
        url = re.sub(r"\{[^}]+\}", "x", route.path)
        requests.extend((method, url) for method in sorted(route.methods))
    return requests


@dataclass
class Secrets:
    read: str
    admin: str
    env_admin: str
    write_key: str


async def real_write_key(settings: Settings) -> str:
    """A valid write key in ingest's table: it must still be refused by every token-protected route."""
    schema = service_schema(settings, "ingest")
    engine = create_engine(settings.database_url, schema=schema, pool_size=1)
    try:
        await apply_migrations(engine, script_location=INGEST_MIGRATIONS, schema=schema)
        return await create_key(engine, name=f"shop-{secrets.token_hex(4)}")
    finally:
        await engine.dispose()


@asynccontextmanager
async def running(app: FastAPI, base_url: str = "http://service") -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client,
    ):
        yield client


def with_admin_token(settings: Settings) -> tuple[Settings, str]:
    env_admin = "env-" + secrets.token_urlsafe(24)
    return settings.model_copy(update={"admin_token": SecretStr(env_admin)}), env_admin


@pytest.mark.parametrize("service", ["ingest", "stage-engine", "metrics", "campaigns"])
async def test_every_route_but_the_open_ones_needs_a_token_with_the_right_role(
    settings: Settings, topics: Topics, service: str
) -> None:
    configured, env_admin = with_admin_token(settings)
    app = app_factories()[service](configured)
    async with running(app) as client:
        given = Secrets(
            read=await create_api_token(app, Role.READ),
            admin=await create_api_token(app, Role.ADMIN),
            env_admin=env_admin,
            write_key=await real_write_key(settings),
        )
        requests = protected_requests(app, tracking_is_open=service == "ingest")
        if service == "stage-engine":  # the walk itself must see the routes it is meant to check
            assert {("GET", "/v1/customers/x"), ("GET", "/v1/customers"), ("DELETE", "/v1/customers/x")} <= set(
                requests
            )
        if service == "campaigns":
            assert {
                ("POST", "/v1/campaigns"),
                ("PUT", "/v1/campaigns/x"),
                ("DELETE", "/v1/campaigns/x"),
                ("POST", "/v1/campaigns/x/pause"),
                ("GET", "/v1/campaign-stats"),
                ("GET", "/v1/customers/x/messages"),
            } <= set(requests)
        if service == "metrics":
            assert ("GET", "/v1/dashboard/campaigns") in requests
        for method, url in requests:
            await check_route(client, method, url, given)
        for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
            assert (await client.get(path)).status_code == 200, path
        if service == "metrics":
            assert (await client.get("/dashboard")).status_code == 200


async def check_route(client: httpx.AsyncClient, method: str, url: str, given: Secrets) -> None:
    async def call(headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None) -> httpx.Response:
        return await client.request(method, url, headers=headers, auth=auth)

    where = f"{method} {url}"
    for refused in (
        await call(),
        await call(bearer(given.write_key)),
        await call(auth=(given.write_key, "")),
        await call(bearer("clmtk_" + secrets.token_urlsafe(24))),
        await call({"Authorization": "Bearer"}),
        await call({"Authorization": given.admin}),
    ):
        assert refused.status_code == 401, (where, refused.status_code)
        assert refused.headers["WWW-Authenticate"].startswith("Bearer"), where
    for secret in (given.write_key, given.admin):
        assert secret not in (await call(bearer(given.write_key))).text
    with_read = await call(bearer(given.read))
    if method in READ_METHODS:
        assert with_read.status_code not in (401, 403), where
    else:
        assert with_read.status_code == 403, (where, with_read.status_code)
    for admin in (given.admin, given.env_admin):
        assert (await call(bearer(admin))).status_code not in (401, 403), where


async def test_tracking_endpoints_take_write_keys_and_refuse_tokens(settings: Settings, topics: Topics) -> None:
    from ingest.app import create_app

    configured, env_admin = with_admin_token(settings)
    app = create_app(configured)
    async with running(app) as client:
        token = await create_api_token(app, Role.ADMIN)
        key = await create_key(app.state.ctx.engine, name="shop")
        for endpoint in ENDPOINTS:
            body = {"batch": [track_call()]} if endpoint == "batch" else track_call()
            for refused in (
                await client.post(f"/v1/{endpoint}", json=body, auth=(token, "")),
                await client.post(f"/v1/{endpoint}", json=body, auth=(env_admin, "")),
                await client.post(f"/v1/{endpoint}", json=body, headers=bearer(token)),
                await client.post(f"/v1/{endpoint}", json={**body, "writeKey": token}),
            ):
                assert refused.status_code == 401, endpoint
                assert token not in refused.text
        assert (await client.post("/v1/track", json=track_call(), auth=(key, ""))).status_code == 200


def probe_router() -> APIRouter:
    """A router as a new service would pass one in: it adds no access check of its own."""
    router = APIRouter()

    @router.get("/v1/probe")
    async def read() -> dict[str, str]:
        return {"read": "ok"}

    @router.post("/v1/probe")
    async def change() -> dict[str, str]:
        return {"changed": "ok"}

    return router


def probe_app(settings: Settings) -> FastAPI:
    return create_service_app("metrics", settings, migrations=METRICS_MIGRATIONS, routers=[probe_router()])


async def test_a_router_passed_to_the_service_is_protected_and_a_revoked_token_stops_within_10_seconds(
    settings: Settings,
) -> None:
    app = probe_app(settings)
    async with running(app) as client:
        read = await create_api_token(app, Role.READ, name="reader")
        admin = await create_api_token(app, Role.ADMIN, name="operator")
        assert (await client.get("/v1/probe")).status_code == 401
        assert (await client.get("/v1/probe", headers=bearer(read))).json() == {"read": "ok"}
        assert (await client.post("/v1/probe", headers=bearer(read))).status_code == 403
        assert (await client.post("/v1/probe", headers=bearer(admin))).json() == {"changed": "ok"}

        await revoke_token(access_engine(app.state.ctx.engine, settings), name="operator")
        revoked_at = time.monotonic()

        async def refused() -> bool:
            return (await client.post("/v1/probe", headers=bearer(admin))).status_code == 401

        await wait_for(refused, timeout_s=10, what="the revoked token to be refused")
        assert time.monotonic() - revoked_at <= 10
        assert (await client.get("/v1/probe", headers=bearer(read))).status_code == 200


async def test_openapi_offers_bearer_auth_for_the_protected_routes(settings: Settings, topics: Topics) -> None:
    from stage_engine.app import create_app

    app = create_app(settings)
    async with running(app) as client:
        spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/customers/{customer_id}"]["delete"]["security"] == [{"HTTPBearer": []}]


async def test_without_clm_admin_token_the_services_accept_the_one_clm_up_generated(
    settings: Settings, tmp_path: Path
) -> None:
    from clm_cli.main import ensure_admin_token
    from clm_shared.access.tokens import admin_token_of

    local = settings.model_copy(update={"data_dir": tmp_path})
    ensure_admin_token(local)
    generated = admin_token_of(local)
    assert generated is not None
    app = probe_app(local)
    async with running(app) as client:
        assert (await client.post("/v1/probe", headers=bearer(generated))).status_code == 200
        assert (await client.post("/v1/probe", headers=bearer(generated[:-1]))).status_code == 401
