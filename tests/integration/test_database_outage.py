"""A PostgreSQL outage (a scratch server this test stops): known credentials keep working, unknown ones get 503."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clm_cli.infra.postgres import PostgresServer
from clm_cli.infra.process import free_port
from clm_shared.access.tokens import Role
from clm_shared.topics import Topics
from ingest.app import create_app as create_ingest
from ingest.keys import create_key
from tests.conftest import make_settings
from tests.integration.test_access import probe_app, running
from tests.utils.factories import track_call
from tests.utils.tokens import bearer, create_api_token
from tests.waiting import wait_for

# Longer than the caches' reload period (5 s): known credentials must outlive a failed reload.
OUTAGE_S = 6.5


@pytest.fixture
def scratch_postgres() -> Iterator[PostgresServer]:
    scratch = Path(tempfile.mkdtemp(prefix="clm-test-pg-outage-"))
    scratch.chmod(0o755)  # the postgres server user must reach the cluster inside it
    server = PostgresServer(data_dir=scratch / "pg", port=free_port())
    yield server
    server.stop()
    shutil.rmtree(scratch, ignore_errors=True)


async def test_known_keys_and_tokens_work_through_an_outage_and_unknown_ones_get_503(
    scratch_postgres: PostgresServer, kafka_bootstrap: str, topics: Topics, namespace: str
) -> None:
    server = scratch_postgres
    await asyncio.to_thread(server.start)
    await asyncio.to_thread(server.ensure_database)
    settings = make_settings(kafka_bootstrap, server.url, namespace)
    ingest_app = create_ingest(settings.model_copy(update={"ingest_publish_timeout_s": 2.0}))
    api_app = probe_app(settings)
    async with running(ingest_app) as ingest, running(api_app) as api:
        key = await create_key(ingest_app.state.ctx.engine, name="known")
        token = await create_api_token(api_app, Role.READ, name="known")

        async def track(write_key: str) -> httpx.Response:
            return await ingest.post("/v1/track", json=track_call(), auth=(write_key, ""))

        async def probe(api_token: str) -> httpx.Response:
            return await api.get("/v1/probe", headers=bearer(api_token))

        assert (await track(key)).status_code == 200
        assert (await probe(token)).status_code == 200

        await asyncio.to_thread(server.stop)
        stopped_at = time.monotonic()
        unknown_key, unknown_token = "clmwk_" + secrets.token_urlsafe(24), "clmtk_" + secrets.token_urlsafe(24)
        unavailable: list[httpx.Response] = []

        async def outage_observed() -> bool:
            assert (await track(key)).status_code == 200  # known: served from the cache
            assert (await probe(token)).status_code == 200
            answers = [await track(unknown_key), await probe(unknown_token)]
            # Right after the stop the caches may still be fresh enough to say 401; never 500.
            assert all(a.status_code in (401, 503) for a in answers), [a.status_code for a in answers]
            unavailable.extend(a for a in answers if a.status_code == 503)
            return time.monotonic() - stopped_at > OUTAGE_S and len(unavailable) >= 2

        await wait_for(outage_observed, timeout_s=30, what="an outage longer than the reload period")
        assert {a.request.url.path for a in unavailable} == {"/v1/track", "/v1/probe"}
        for answer in unavailable:
            assert int(answer.headers["Retry-After"]) >= 1
            assert unknown_key not in answer.text and unknown_token not in answer.text

        await asyncio.to_thread(server.start)
        late_key = await create_key(ingest_app.state.ctx.engine, name="late")
        late_token = await create_api_token(api_app, Role.READ, name="late")

        async def late_ones_accepted() -> bool:
            return (await track(late_key)).status_code == 200 and (await probe(late_token)).status_code == 200

        await wait_for(late_ones_accepted, timeout_s=15, what="credentials made after the outage to work")
        assert (await track(unknown_key)).status_code == 401
        assert (await probe(unknown_token)).status_code == 401
