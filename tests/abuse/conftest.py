"""Each service served by uvicorn on a free port (real Kafka and PostgreSQL), with every kind of credential."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from clm_shared.access.tokens import Role, access_engine, create_token
from clm_shared.db import create_engine, service_schema
from clm_shared.migrations import apply_migrations
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from ingest.app import MIGRATIONS as INGEST_MIGRATIONS
from ingest.keys import create_key
from tests.utils.serving import served

SERVICES = ("ingest", "stage-engine", "metrics", "campaigns")
# Short, so a slow-client test waits seconds, not the default's 20.
BODY_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Service:
    """A running service and one secret of each kind (the write key is real, in ingest's table)."""

    name: str
    url: str
    app: FastAPI
    settings: Settings
    admin: str
    read: str
    write_key: str


def app_factories() -> dict[str, Callable[[Settings], FastAPI]]:
    from campaigns.app import create_app as campaigns
    from ingest.app import create_app as ingest
    from metrics.app import create_app as metrics
    from stage_engine.app import create_app as stage_engine

    return {"ingest": ingest, "stage-engine": stage_engine, "metrics": metrics, "campaigns": campaigns}


def abuse_settings(settings: Settings, data_dir: Path) -> Settings:
    return settings.model_copy(
        update={
            "admin_token": SecretStr("env-" + secrets.token_urlsafe(24)),
            "data_dir": data_dir,
            "campaigns_signing_key": SecretStr(secrets.token_urlsafe(32)),
            "http_body_timeout_s": BODY_TIMEOUT_S,
            "ingest_publish_timeout_s": 3.0,
        }
    )


async def stored_secrets(settings: Settings) -> tuple[str, str]:
    """A read token (the served app has migrated the access schema) and a write key."""
    schema = service_schema(settings, "ingest")
    engine = create_engine(settings.database_url, schema=schema, pool_size=1)
    try:
        read = await create_token(
            access_engine(engine, settings), name=f"reader-{secrets.token_hex(4)}", role=Role.READ
        )
        await apply_migrations(engine, script_location=INGEST_MIGRATIONS, schema=schema)
        return read, await create_key(engine, name=f"shop-{secrets.token_hex(4)}")
    finally:
        await engine.dispose()


@asynccontextmanager
async def serving(name: str, settings: Settings) -> AsyncIterator[Service]:
    app = app_factories()[name](settings)
    with served(app, name) as url:
        read, write_key = await stored_secrets(settings)
        assert settings.admin_token is not None
        yield Service(name, url, app, settings, settings.admin_token.get_secret_value(), read, write_key)


@pytest.fixture
async def ingest(settings: Settings, topics: Topics, tmp_path: Path) -> AsyncIterator[Service]:
    async with serving("ingest", abuse_settings(settings, tmp_path)) as service:
        yield service
