"""Migrations and the shared DB layer against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_cli.infra.process import free_port
from clm_cli.stack import migrate_all
from clm_shared.db import create_engine, database_reachable, service_schema, session_factory
from clm_shared.migrations import apply_migrations
from clm_shared.settings import Settings
from ingest.app import MIGRATIONS
from ingest.keys import KeyNameTaken, UnknownKey, active_key_hashes, create_key, hash_key, list_keys, revoke_key


@pytest.fixture
async def ingest_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    schema = service_schema(settings, "ingest")
    engine = create_engine(settings.database_url, schema=schema)
    await apply_migrations(engine, script_location=MIGRATIONS, schema=schema)
    yield engine
    await engine.dispose()


async def test_migrations_create_the_tables_in_the_services_own_schema(
    ingest_engine: AsyncEngine, settings: Settings
) -> None:
    async with ingest_engine.connect() as conn:
        tables = await conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s ORDER BY 1"),
            {"s": service_schema(settings, "ingest")},
        )
        assert [row[0] for row in tables] == ["alembic_version", "write_keys"]
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one() == "0001"


async def test_applying_migrations_again_and_concurrently_changes_nothing(
    ingest_engine: AsyncEngine, settings: Settings
) -> None:
    schema = service_schema(settings, "ingest")
    await create_key(ingest_engine, name="before")
    await asyncio.gather(
        *(apply_migrations(ingest_engine, script_location=MIGRATIONS, schema=schema) for _ in range(3))
    )
    assert [key.name for key in await list_keys(ingest_engine)] == ["before"]


async def test_every_service_migrates_into_its_own_schema_and_the_tokens_into_access(settings: Settings) -> None:
    await migrate_all(settings)
    engine = create_engine(settings.database_url, schema="public", pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE :p ORDER BY 1"),
                {"p": settings.schema_namespace + "%"},
            )
            assert [r[0].removeprefix(settings.schema_namespace) for r in rows] == [
                "access",
                "campaigns",
                "ingest",
                "metrics",
                "stage_engine",
            ]
    finally:
        await engine.dispose()


async def test_write_keys_are_stored_hashed_and_revocable(ingest_engine: AsyncEngine) -> None:
    key = await create_key(ingest_engine, name="shop-web")
    other = await create_key(ingest_engine, name="backend")
    assert key != other
    with pytest.raises(KeyNameTaken):
        await create_key(ingest_engine, name="shop-web")
    async with session_factory(ingest_engine)() as session:
        stored = (await session.execute(text("SELECT key_hash FROM write_keys ORDER BY id"))).scalars().all()
    assert key not in stored and hash_key(key) in stored
    assert await active_key_hashes(ingest_engine) == {hash_key(key): "shop-web", hash_key(other): "backend"}

    await revoke_key(ingest_engine, name="shop-web")
    assert await active_key_hashes(ingest_engine) == {hash_key(other): "backend"}
    listed = {k.name: k for k in await list_keys(ingest_engine)}
    assert listed["shop-web"].revoked_at is not None and listed["backend"].revoked_at is None
    with pytest.raises(UnknownKey):
        await revoke_key(ingest_engine, name="shop-web")


async def test_reachability_reports_a_dead_server_as_not_ready(ingest_engine: AsyncEngine) -> None:
    assert await database_reachable(ingest_engine)
    dead = create_engine(f"postgresql+asyncpg://clm@127.0.0.1:{free_port()}/clm", schema="public")
    assert not await database_reachable(dead, timeout_s=2)
    await dead.dispose()
