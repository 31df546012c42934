"""One database transaction on a raw asyncpg connection, for the hot paths of consumers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

# An asyncpg connection (asyncpg ships no type hints). Array parameters (``= ANY($1)``, ``unnest``)
# and COPY instead of thousands of bound parameters: most of a consumer's time otherwise.
Db = Any


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[Db]:
    """An asyncpg connection from the engine's pool, inside one transaction (committed on success)."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        db: Db = raw.driver_connection
        try:
            async with db.transaction():
                yield db
        except asyncpg.PostgresError:
            # The server refused a statement and the transaction is rolled back: the connection is
            # fine, unless the server ended it (a shutdown).
            if db.is_closed():
                await conn.invalidate()
            raise
        except BaseException:
            # Failed or cancelled mid-statement, a connection can be closed or left mid-operation:
            # never back into the pool (there is no ping at checkout to catch it). A new one is cheap
            # next to a failed batch.
            await conn.invalidate()
            raise


@asynccontextmanager
async def exclusive(engine: AsyncEngine, name: str) -> AsyncIterator[bool]:
    """True to the one holder of ``name`` across every process on the database, False to the others.

    For periodic work that several workers or instances of a service would otherwise each do (a
    model refit): a session advisory lock on a connection of its own, outside any transaction, so
    the work in between may take seconds without holding a transaction open. The lock goes with
    the connection if the process dies.
    """
    async with engine.connect() as conn:
        db: Db = (await conn.get_raw_connection()).driver_connection
        key = "SELECT hashtextextended(current_schema() || ':' || $1, 0)"
        try:
            held = bool(await db.fetchval(f"SELECT pg_try_advisory_lock(({key}))", name))
        except BaseException:
            await conn.invalidate()  # the server may have granted it: never back into the pool so
            raise
        try:
            yield held
        finally:
            if held:
                try:
                    await db.execute(f"SELECT pg_advisory_unlock(({key}))", name)
                except BaseException as exc:
                    # Closing the session releases it too (and a session that died has released it).
                    await conn.invalidate()
                    if not isinstance(exc, Exception):
                        raise
