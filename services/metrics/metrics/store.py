"""Writes the facts of a batch in the caller's transaction (asyncpg, array parameters, one statement per table)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime

from clm_shared.cloudevents import Envelope
from clm_shared.schemas.touchpoint import AnyTouchpoint
from clm_shared.transactions import Db
from metrics.facts import (
    COUNTERS,
    CampaignEvent,
    Erasure,
    HealthMove,
    LifecycleFact,
    Merge,
    StageReached,
    TouchpointFacts,
    lifecycle_fact,
    touchpoint_facts,
)

# Tables whose rows belong to one customer: re-keyed on merge and on erasure.
_COLUMNS = ", ".join(COUNTERS)
_ADD_COUNTERS = ", ".join(f"{c} = daily_facts.{c} + excluded.{c}" for c in COUNTERS)
_PIVOT = ", ".join(f"coalesce(sum(v) FILTER (WHERE n = '{c}'), 0)" for c in COUNTERS)


async def resolve(db: Db, keys: set[str]) -> dict[str, str]:
    rows = await db.fetch("SELECT alias_id, customer_id FROM aliases WHERE alias_id = ANY($1::text[])", list(keys))
    return {row[0]: row[1] for row in rows}


async def apply_touchpoints(db: Db, touchpoints: Sequence[AnyTouchpoint]) -> None:
    mapping = await resolve(db, {tp.customer_key for tp in touchpoints})
    facts = [touchpoint_facts(tp, mapping.get(tp.customer_key, tp.customer_key)) for tp in touchpoints]
    await _first_touches(db, facts)
    await _daily_counters(db, facts)
    events = [f.key_event for f in facts if f.key_event is not None]
    if events:
        await db.copy_records_to_table(
            "key_events",
            records=[(e.customer_id, e.name, e.at, e.revenue, e.score, e.checkout_id) for e in events],
            columns=["customer_id", "name", "at", "revenue", "score", "checkout_id"],
        )


async def _first_touches(db: Db, facts: Sequence[TouchpointFacts]) -> None:
    first: dict[str, TouchpointFacts] = {}
    for fact in facts:
        if fact.customer_id not in first or fact.at < first[fact.customer_id].at:
            first[fact.customer_id] = fact
    ordered = sorted(first)  # one lock order, so two instances never deadlock
    # Most customers of a batch were seen before and earlier: the NOT EXISTS skips them with an index
    # read, where the conflict clause alone would lock (and log) each of their rows to change nothing.
    await db.execute(
        """
        INSERT INTO customers (customer_id, first_touch_at, source)
        SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS u(c, t, s)
        WHERE NOT EXISTS (SELECT 1 FROM customers k WHERE k.customer_id = u.c AND k.first_touch_at <= u.t)
        ON CONFLICT (customer_id) DO UPDATE SET first_touch_at = excluded.first_touch_at, source = excluded.source
        WHERE excluded.first_touch_at < customers.first_touch_at
        """,
        ordered,
        [first[c].at for c in ordered],
        [first[c].source for c in ordered],
    )


async def _daily_counters(db: Db, facts: Sequence[TouchpointFacts]) -> None:
    # Sent sparse, one (customer, day, counter, value) per counter a touchpoint moved, and pivoted by
    # PostgreSQL: a touchpoint moves one or two of the counters, and encoding every counter's array
    # was most of the time asyncpg spent on this statement.
    sums: dict[tuple[str, date, str], float] = defaultdict(float)
    for fact in facts:
        for name, value in fact.counters.items():
            sums[(fact.customer_id, fact.day, name)] += value
    if not sums:
        return
    keys = sorted(sums)
    await db.execute(
        f"""
        INSERT INTO daily_facts (customer_id, day, {_COLUMNS})
        SELECT c, d, {_PIVOT} FROM unnest($1::text[], $2::date[], $3::text[], $4::float8[]) AS u(c, d, n, v)
        GROUP BY c, d
        ORDER BY c, d
        ON CONFLICT (customer_id, day) DO UPDATE SET {_ADD_COUNTERS}
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [sums[k] for k in keys],
    )


async def apply_lifecycle(db: Db, events: Sequence[Envelope]) -> None:
    """Stage, health and campaign facts in bulk; merges and erasures in their place in the batch's order."""
    pending: list[LifecycleFact] = []
    for event in events:
        fact = lifecycle_fact(event)
        if isinstance(fact, Merge | Erasure):
            await _bulk(db, pending)
            pending = []
            await (_merge(db, fact) if isinstance(fact, Merge) else _erase(db, fact))
        elif fact is not None:
            pending.append(fact)
    await _bulk(db, pending)


async def _bulk(db: Db, facts: Sequence[LifecycleFact]) -> None:
    reached: dict[tuple[str, str], datetime] = {}
    health: list[HealthMove] = []
    campaigns: dict[tuple[date, str, str], int] = defaultdict(int)
    for fact in facts:
        if isinstance(fact, StageReached):
            for stage in fact.stages:
                key = (fact.customer_id, stage.value)
                reached[key] = min(reached.get(key, fact.at), fact.at)
        elif isinstance(fact, HealthMove):
            health.append(fact)
        elif isinstance(fact, CampaignEvent):
            campaigns[(fact.day, fact.type, fact.campaign)] += 1
    if reached:
        # A stage change names every stage before it too, and those rows mostly exist with an earlier
        # time: the WHERE leaves them unwritten (no new row version, no WAL, nothing to vacuum).
        keys = sorted(reached)
        await db.execute(
            """
            INSERT INTO stage_reached (customer_id, stage, reached_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
            ON CONFLICT (customer_id, stage)
            DO UPDATE SET reached_at = excluded.reached_at WHERE excluded.reached_at < stage_reached.reached_at
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [reached[k] for k in keys],
        )
    if health:
        await db.execute(
            """
            INSERT INTO health_changes (event_id, customer_id, health, at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
            ON CONFLICT (event_id) DO NOTHING
            """,
            [h.event_id for h in health],
            [h.customer_id for h in health],
            [h.health for h in health],
            [h.at for h in health],
        )
    if campaigns:
        keys3 = sorted(campaigns)
        await db.execute(
            """
            INSERT INTO campaign_daily (day, type, campaign, events)
            SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::int[])
            ON CONFLICT (day, type, campaign) DO UPDATE SET events = campaign_daily.events + excluded.events
            """,
            [k[0] for k in keys3],
            [k[1] for k in keys3],
            [k[2] for k in keys3],
            [campaigns[k] for k in keys3],
        )


async def _merge(db: Db, merge: Merge) -> None:
    """The merged profile's facts become the customer's: one person, counted once."""
    m, c = merge.merged_id, merge.customer_id
    if m == c:
        return
    await db.execute(
        "INSERT INTO aliases (alias_id, customer_id) VALUES ($1, $2)"
        " ON CONFLICT (alias_id) DO UPDATE SET customer_id = excluded.customer_id",
        m,
        c,
    )
    await db.execute("UPDATE aliases SET customer_id = $2 WHERE customer_id = $1", m, c)
    await db.execute(
        """
        INSERT INTO customers (customer_id, first_touch_at, source)
        SELECT $2, first_touch_at, source FROM customers WHERE customer_id = $1
        ON CONFLICT (customer_id) DO UPDATE SET first_touch_at = excluded.first_touch_at, source = excluded.source
        WHERE excluded.first_touch_at < customers.first_touch_at
        """,
        m,
        c,
    )
    await db.execute(
        f"""
        INSERT INTO daily_facts (customer_id, day, {_COLUMNS})
        SELECT $2, day, {_COLUMNS} FROM daily_facts WHERE customer_id = $1
        ON CONFLICT (customer_id, day) DO UPDATE SET {_ADD_COUNTERS}
        """,
        m,
        c,
    )
    await db.execute(
        """
        INSERT INTO stage_reached (customer_id, stage, reached_at)
        SELECT $2, stage, reached_at FROM stage_reached WHERE customer_id = $1
        ON CONFLICT (customer_id, stage) DO UPDATE SET reached_at = least(stage_reached.reached_at, excluded.reached_at)
        """,
        m,
        c,
    )
    await db.execute("UPDATE key_events SET customer_id = $2 WHERE customer_id = $1", m, c)
    # The anonymous profile's health history ends with it; the customer's own goes on.
    for table in ("customers", "daily_facts", "stage_reached", "health_changes"):
        await db.execute(f"DELETE FROM {table} WHERE customer_id = $1", m)


async def _erase(db: Db, erasure: Erasure) -> None:
    """Counts stay, the person goes: the customer's rows move to a random id nothing links back."""
    anonymous = "erased-" + uuid.uuid4().hex
    for table in ("customers", "daily_facts", "key_events", "stage_reached", "health_changes"):
        await db.execute(f"UPDATE {table} SET customer_id = $2 WHERE customer_id = $1", erasure.customer_id, anonymous)
    await db.execute("DELETE FROM aliases WHERE customer_id = $1 OR alias_id = $1", erasure.customer_id)
