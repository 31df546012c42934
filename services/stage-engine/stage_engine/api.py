"""Customer API: look up one customer, list a segment (keyset pages), erase a customer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.paths import ANY_TEXT
from clm_shared.schemas.lifecycle import Health, Stage
from clm_shared.transactions import transaction
from stage_engine.batch import Emitted, Erased, event_id
from stage_engine.erasure import erased_id_hash
from stage_engine.events import HISTORY_COLUMNS, to_record
from stage_engine.repository import (
    OUTBOX,
    TIMERS,
    load_customers,
    lock_customers,
    resolve,
)
from stage_engine.tables import customers

router = APIRouter(prefix="/v1/customers", tags=["customers"])


def _engine(request: Request) -> AsyncEngine:
    return request.app.state.ctx.engine  # type: ignore[no-any-return]


Engine = Annotated[AsyncEngine, Depends(_engine)]


class HistoryItem(BaseModel):
    customer_id: str
    sequence: int
    event_id: str
    kind: str
    from_value: str | None
    to_value: str
    skipped: list[str]
    rule: str
    message_id: str | None
    event_time: datetime


class CustomerPublic(BaseModel):
    customer_id: str
    known_ids: list[str]
    stage: Stage | None
    health: Health
    traits: dict[str, Any]
    counters: dict[str, int]
    revenue: dict[str, float]
    first_seen_at: datetime | None
    last_activity_at: datetime | None
    history: list[HistoryItem]


class CustomerSummary(BaseModel):
    customer_id: str
    stage: Stage | None
    health: Health


class CustomerPage(BaseModel):
    items: list[CustomerSummary]
    next_cursor: str | None


@router.get(f"/{{customer_id:{ANY_TEXT}}}", response_model=CustomerPublic)
async def get_customer(customer_id: str, engine: Engine) -> CustomerPublic:
    """One customer by userId or anonymousId: stage, health, traits, counters and history."""
    async with transaction(engine) as db:
        canonical = (await resolve(db, [customer_id])).get(customer_id, customer_id)
        found = await load_customers(db, [canonical])
        if canonical not in found:
            raise HTTPException(404, f"no customer {customer_id!r}")
        state = found[canonical]
        aliases = [r[0] for r in await db.fetch("SELECT alias_id FROM identities WHERE customer_id = $1", canonical)]
        # Both histories are kept on a merge: the merged profiles' rows are listed too, all by event time.
        rows = await db.fetch(
            f"SELECT {', '.join(HISTORY_COLUMNS)} FROM history WHERE customer_id = ANY($1::text[])"
            " ORDER BY event_time, customer_id <> $2, sequence",
            [canonical, *aliases],
            canonical,
        )
    return CustomerPublic(
        customer_id=canonical,
        known_ids=sorted({canonical, *aliases}),
        stage=state.stage,
        health=state.health,
        traits=state.traits,
        counters=state.signal_counts,
        revenue=state.signal_revenue,
        first_seen_at=state.first_seen_at,
        last_activity_at=state.last_activity_at,
        history=[HistoryItem.model_validate(dict(row)) for row in rows],
    )


@router.get("", response_model=CustomerPage)
async def list_customers(
    engine: Engine,
    stage: str | None = None,
    health: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> CustomerPage:
    """A segment by stage and/or health, ordered by customer id; pass ``next_cursor`` for the next page."""
    query = select(customers.c.customer_id, customers.c.stage, customers.c.health)
    if stage is not None:
        if stage not in Stage.__members__.values():
            raise HTTPException(400, f"stage must be one of {', '.join(Stage)}")
        query = query.where(customers.c.stage == stage)
    if health is not None:
        if health not in Health.__members__.values():
            raise HTTPException(400, f"health must be one of {', '.join(Health)}")
        query = query.where(customers.c.health == health)
    if cursor:
        if "\x00" in cursor:  # sent on, the database's error was a 500
            raise HTTPException(400, "cursor cannot hold the NUL character (U+0000): no customer id does")
        query = query.where(customers.c.customer_id > cursor)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(customers.c.customer_id).limit(limit + 1))).all()
    items = [CustomerSummary(customer_id=r[0], stage=r[1], health=r[2]) for r in rows[:limit]]
    return CustomerPage(items=items, next_cursor=items[-1].customer_id if len(rows) > limit else None)


@router.delete(f"/{{customer_id:{ANY_TEXT}}}", status_code=204)
async def erase_customer(customer_id: str, request: Request, engine: Engine) -> Response:
    """Erase a customer: traits, identities and history go; only anonymous stage counts stay.

    ``clm.customer.erased`` is published so that the other services erase their copies too.
    """
    topic = request.app.state.ctx.topics.stage_changes
    async with transaction(engine) as db:
        canonical = (await resolve(db, [customer_id])).get(customer_id, customer_id)
        await lock_customers(db, [canonical])
        found = await load_customers(db, [canonical])
        if canonical not in found:
            raise HTTPException(404, f"no customer {customer_id!r}")
        state = found[canonical]
        await db.execute(
            "INSERT INTO erased_counts (stage, health, customers) VALUES ($1, $2, 1)"
            " ON CONFLICT (stage, health) DO UPDATE SET customers = erased_counts.customers + 1",
            state.stage.value if state.stage else "none",
            state.health.value,
        )
        aliases = [r[0] for r in await db.fetch("SELECT alias_id FROM identities WHERE customer_id = $1", canonical)]
        # The merged profiles' history is this customer's too.
        await db.execute("DELETE FROM history WHERE customer_id = ANY($1::text[])", [canonical, *aliases])
        for table in ("customers", "identities"):
            await db.execute(f"DELETE FROM {table} WHERE customer_id = $1", canonical)
        await TIMERS.cancel(db, [canonical])
        now = datetime.now(UTC)
        await db.execute(
            "INSERT INTO erased_ids (id_hash, erased_at) SELECT h, $2 FROM unnest($1::text[]) AS h"
            " ON CONFLICT (id_hash) DO UPDATE SET erased_at = excluded.erased_at",
            [erased_id_hash(i, request.app.state.erasure_key) for i in (canonical, *aliases)],
            now,
        )
        sequence = state.sequence + 1
        erased = Emitted(canonical, sequence, event_id(canonical, sequence, state.origin), Erased(now))
        await OUTBOX.add(db, [to_record(erased, topic)])
    request.app.state.engine.outbox_ready.set()
    return Response(status_code=204)
