"""Alembic, run from code: each service has its own migration history inside its own schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

VERSION_TABLE = "alembic_version"


async def apply_migrations(engine: AsyncEngine, *, script_location: Path, schema: str, revision: str = "head") -> None:
    """Upgrade the schema to head (or ``revision``); an advisory lock lets several instances start at once."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:schema))"), {"schema": schema})
        await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await conn.execute(text(f'SET LOCAL search_path TO "{schema}"'))
        await conn.run_sync(_upgrade, str(script_location), schema, revision)


def _upgrade(connection: Connection, script_location: str, schema: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    command.upgrade(config, revision)


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's ``env.py``: migrate on the connection ``apply_migrations`` hands over."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `clm migrate` (or the service's start-up), not bare alembic")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        version_table_schema=context.config.attributes["schema"],
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
