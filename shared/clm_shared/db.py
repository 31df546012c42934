"""SQLAlchemy 2 async engine and sessions; each service works inside its own PostgreSQL schema."""

from __future__ import annotations

import asyncio

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from clm_shared.settings import Settings

SERVICE_SCHEMAS = {
    "ingest": "ingest",
    "stage-engine": "stage_engine",
    "metrics": "metrics",
    "campaigns": "campaigns",
}


def service_schema(settings: Settings, service: str) -> str:
    """The schema a service owns: no other service reads its tables."""
    return settings.schema_namespace + SERVICE_SCHEMAS[service]


def create_engine(database_url: str, *, schema: str, pool_size: int = 5) -> AsyncEngine:
    """An engine whose connections see the service's schema first."""
    return create_async_engine(
        database_url,
        json_serializer=_json_text,
        json_deserializer=orjson.loads,
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args={"server_settings": {"search_path": schema}, "timeout": 10},
    )


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def database_reachable(engine: AsyncEngine, timeout_s: float = 3.0) -> bool:
    """True when PostgreSQL answers a query within the timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        return True
    except Exception:  # any failure means "not ready"; the reason is in the service's logs
        return False
