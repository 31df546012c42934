"""One database transaction on a raw asyncpg connection, for the hot paths of consumers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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
        async with db.transaction():
            yield db
