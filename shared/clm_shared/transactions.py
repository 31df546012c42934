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
