"""What the stage engine holds in PostgreSQL, as comparable values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import text

from clm_shared.db import create_engine, service_schema
from clm_shared.settings import Settings
from stage_engine.stored_state import load_state


async def snapshot(settings: Settings, clock: datetime | None = None) -> dict[str, Any]:
    engine = create_engine(settings.database_url, schema=service_schema(settings, "stage-engine"), pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT customer_id, state FROM customers"))
            # As plain JSON values (the stored bytes are MessagePack): comparable, and readable in a diff.
            customers = {r[0]: msgspec.to_builtins(load_state(r[1])) for r in rows}
            rows = await conn.execute(text("SELECT alias_id, customer_id FROM identities"))
            identities: dict[str, str] = {alias: canonical for alias, canonical in rows}
            history = [
                tuple(r)
                for r in await conn.execute(
                    text(
                        "SELECT customer_id, sequence, event_id, kind, from_value, to_value, skipped, rule,"
                        " message_id, event_time FROM history ORDER BY customer_id, sequence"
                    )
                )
            ]
            processed = await conn.scalar(text("SELECT count(*) FROM processed_messages"))
            outbox = await conn.scalar(text("SELECT count(*) FROM outbox"))
            due = await conn.scalar(
                text("SELECT count(*) FROM timers WHERE due_at <= :now"), {"now": clock or datetime.now(UTC)}
            )
    finally:
        await engine.dispose()
    return {
        "customers": customers,
        "identities": identities,
        "history": history,
        "processed": processed,
        "outbox": outbox,
        "due_timers": due,
    }


async def processed_count(settings: Settings) -> int:
    engine = create_engine(settings.database_url, schema=service_schema(settings, "stage-engine"), pool_size=1)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("SELECT count(*) FROM processed_messages")) or 0)
    except Exception:  # tables not created yet
        return 0
    finally:
        await engine.dispose()
