"""The campaigns service's two consumers: touchpoints and lifecycle events, one transaction per batch.

Both load what the batch's customers need, let ``Journeys`` decide, and write the plan in the same
transaction as the ids they dedup by, so a crash or a replay applies a batch once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from campaigns import store
from campaigns.guardrails import Guardrails
from campaigns.journeys import Journeys, Profile, TriggerEvent
from campaigns.tables import EVENT_DEDUP, TOUCHPOINT_DEDUP
from clm_shared.batch_consumer import TransactionalHandler, cloudevent_handler
from clm_shared.cloudevents import CloudEventDeserializer, Envelope
from clm_shared.dedup import Dedup
from clm_shared.kafka.consumer import Consumed
from clm_shared.schemas.lifecycle import EventType
from clm_shared.schemas.touchpoint import AnyTouchpoint, TouchpointRecord
from clm_shared.serde import StructDeserializer
from clm_shared.transactions import Db

TOUCHPOINTS_GROUP = "campaigns"
LIFECYCLE_GROUP = "campaigns-lifecycle"

ORDER_COMPLETED = "Order Completed"
UNSUBSCRIBED = "Unsubscribed"
EMAIL_BOUNCED = "Email Bounced"
HARD_BOUNCES = frozenset({"hard", "permanent"})

Clock = Callable[[], datetime]

# msgspec, as the stage engine decodes them: pydantic's validation was most of the decoding time.
touchpoint_deserializer = StructDeserializer(TouchpointRecord, "Touchpoint")
lifecycle_deserializer = CloudEventDeserializer()


@dataclass(frozen=True)
class Decisions:
    """What both consumers share: the guardrails, the clock and the campaign-events topic."""

    guardrails: Guardrails
    clock: Clock
    events_topic: str
    watched: store.WatchedEvents = field(default_factory=store.WatchedEvents)

    async def journeys(self, db: Db, customer_ids: Sequence[str], runs: dict[str, list[Any]]) -> Journeys:
        now = self.clock()
        live = await store.live_campaigns(db)
        flat = [run for group in runs.values() for run in group]
        versions = await store.run_versions(db, flat)
        ledger = await store.cap_ledger(
            db, customer_ids, self.guardrails.frequency_cap, self.guardrails.frequency_window, now
        )
        return Journeys(self.guardrails, live, versions, ledger, now)


def _timezone(traits: dict[str, Any], context: dict[str, Any]) -> str | None:
    for value in (traits.get("timezone"), context.get("timezone")):
        if isinstance(value, str) and value:
            return value
    return None


def _profile_input(tp: AnyTouchpoint) -> tuple[dict[str, Any], str | None] | None:
    """The traits and timezone a call brings (identify traits, and traits sent in its context), if any."""
    traits = tp.traits
    context_traits = tp.context.get("traits")
    if isinstance(context_traits, dict) and context_traits:
        traits = {**context_traits, **traits}
    zone = _timezone(traits, tp.context)
    return (traits, zone) if traits or zone is not None else None


def _update_profile(profile: Profile, traits: dict[str, Any], zone: str | None) -> bool:
    """Apply a call's traits and timezone to the profile; True if it changed."""
    before = (profile.email, profile.timezone, dict(profile.traits))
    profile.traits = {**profile.traits, **traits}
    email = traits.get("email")
    if isinstance(email, str) and "@" in email:
        profile.email = email
    if zone is not None:
        profile.timezone = zone
    return before != (profile.email, profile.timezone, profile.traits)


def _products(properties: dict[str, Any]) -> list[tuple[str, str | None, int]]:
    found = []
    products = properties.get("products")
    for item in products if isinstance(products, list) else []:
        if isinstance(item, dict) and item.get("product_id") is not None:
            quantity = item.get("quantity")
            count = quantity if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity > 0 else 1
            name = item.get("name")
            found.append((str(item["product_id"]), name if isinstance(name, str) else None, count))
    return found


async def apply_touchpoints(db: Db, batch: Sequence[AnyTouchpoint], decisions: Decisions) -> list[AnyTouchpoint]:
    """Apply the batch; returns the touchpoints that must not be applied twice (the rest only link ids)."""
    aliases = await store.identities(db, {i for tp in batch for i in (tp.anonymous_id, tp.previous_id) if i})
    links: dict[str, str] = {}
    for tp in batch:
        if tp.user_id:
            for alias in (tp.anonymous_id, tp.previous_id if tp.type == "alias" else None):
                if alias and alias != tp.user_id and aliases.get(alias) != tp.user_id:
                    aliases[alias] = links[alias] = tp.user_id
    await store.link_identities(db, links)

    def customer_of(tp: AnyTouchpoint) -> str:
        return tp.user_id or aliases.get(tp.customer_key) or tp.customer_key

    tracks = [tp for tp in batch if tp.type == "track" and tp.event]
    await _suppressions(db, tracks, customer_of)
    await _purchases(db, [(customer_of(tp), tp) for tp in tracks if tp.event == ORDER_COMPLETED])
    suppressing = [tp for tp in tracks if tp.event in (UNSUBSCRIBED, EMAIL_BOUNCED)]
    # Most touchpoints bring no traits and start, move and end nothing: their customers are not
    # locked, their profiles and runs not loaded, and their ids not remembered.
    if tracks:
        watched = await decisions.watched.names(db)
        tracks = [tp for tp in tracks if tp.event == ORDER_COMPLETED or tp.event in watched]
    inputs = [(tp, found) for tp in batch if (found := _profile_input(tp)) is not None]
    acted = {tp.message_id for tp in (*suppressing, *tracks, *(tp for tp, _ in inputs))}
    once = [tp for tp in batch if tp.message_id in acted]
    customers = sorted({customer_of(tp) for tp in tracks} | {customer_of(tp) for tp, _ in inputs})
    if not customers:
        return once
    await store.lock_customers(db, customers)
    profiles = await store.profiles(db, customers)
    changed: dict[str, Profile] = {}
    for tp, (traits, zone) in inputs:
        profile = profiles[customer_of(tp)]
        if _update_profile(profile, traits, zone):
            changed[profile.customer_id] = profile
    now = decisions.clock()
    await store.save_traits(db, changed.values(), now)
    if not tracks:
        return once
    active = sorted({customer_of(tp) for tp in tracks})
    runs = await store.runs_in_progress(db, active)
    journeys = await decisions.journeys(db, active, runs)
    started = await store.started_triggers(db, active)
    known = {run.run_id: run for group in runs.values() for run in group if run.run_id is not None}
    orders = [tp for tp in tracks if tp.event == ORDER_COMPLETED]
    candidates: dict[str, list[Any]] = {}
    if orders:
        since = min(tp.timestamp for tp in orders) - decisions.guardrails.attribution_window
        candidates = await store.attribution_candidates(db, sorted({customer_of(tp) for tp in orders}), since, known)
    for tp in tracks:
        cid = customer_of(tp)
        profile = profiles[cid]
        assert tp.event is not None
        journeys.on_event(runs[cid], profile, tp.event, tp.properties, tp.timestamp)
        if tp.event == ORDER_COMPLETED:
            journeys.on_order(
                candidates.get(cid, []), tp.timestamp, {"message_id": tp.message_id, "revenue": tp.revenue}
            )
        event = TriggerEvent("event", cid, tp.message_id, tp.event, tp.timestamp, tp.properties)
        new_runs = journeys.on_trigger(event, profile, started[cid])
        runs[cid].extend(new_runs)
        if orders:  # a later order of this batch converts these runs too
            candidates.setdefault(cid, []).extend((run, None) for run in new_runs)
    await store.write_plan(db, journeys.plan, topic=decisions.events_topic, now=now)
    return once


async def _suppressions(db: Db, tracks: list[AnyTouchpoint], customer_of: Callable[[AnyTouchpoint], str]) -> None:
    rows: dict[str, tuple[str, datetime]] = {}
    for tp in tracks:
        if tp.event == UNSUBSCRIBED:
            rows[customer_of(tp)] = ("unsubscribed", tp.timestamp)
        elif tp.event == EMAIL_BOUNCED:
            kind = tp.properties.get("bounce_type") or tp.properties.get("type")
            if isinstance(kind, str) and kind.lower() in HARD_BOUNCES:
                rows[customer_of(tp)] = ("hard_bounce", tp.timestamp)
    await suppress(db, {cid: reason for cid, (reason, _) in rows.items()}, {cid: at for cid, (_, at) in rows.items()})


async def suppress(db: Db, reasons: dict[str, str], times: dict[str, datetime]) -> None:
    """No campaign message reaches these customers any more (the first reason is kept)."""
    if reasons:
        await db.execute(
            "INSERT INTO suppressions (customer_id, reason, at) SELECT * FROM unnest($1::text[], $2::text[],"
            " $3::timestamptz[]) ON CONFLICT (customer_id) DO NOTHING",
            list(reasons),
            list(reasons.values()),
            [times[cid] for cid in reasons],
        )


async def _purchases(db: Db, orders: list[tuple[str, AnyTouchpoint]]) -> None:
    bought: dict[tuple[str, str], tuple[str | None, int]] = {}
    for cid, tp in orders:
        for pid, name, qty in _products(tp.properties):
            before_name, before_qty = bought.get((cid, pid), (None, 0))
            bought[(cid, pid)] = (name or before_name, before_qty + qty)
    # one row per customer and product: an upsert may not touch a row twice
    rows = [(cid, pid, name, qty) for (cid, pid), (name, qty) in bought.items()]
    if rows:
        await db.execute(
            "INSERT INTO purchases (customer_id, product_id, name, quantity) SELECT * FROM unnest($1::text[],"
            " $2::text[], $3::text[], $4::bigint[]) ON CONFLICT (customer_id, product_id) DO UPDATE"
            " SET quantity = purchases.quantity + excluded.quantity, name = coalesce(excluded.name, purchases.name)",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )


def _event_time(envelope: Envelope) -> datetime:
    value = envelope.data.get("event_time")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return envelope.time


async def apply_lifecycle(db: Db, batch: Sequence[Envelope], decisions: Decisions) -> None:
    await store.lock_customers(
        db, [*(e.subject for e in batch), *(str(e.data.get("merged_id")) for e in batch if e.data.get("merged_id"))]
    )
    erased = [e.subject for e in batch if e.type == EventType.CUSTOMER_ERASED]
    merges = {
        str(e.data["merged_id"]): e.subject
        for e in batch
        if e.type == EventType.CUSTOMER_MERGED and isinstance(e.data.get("merged_id"), str)
    }
    await store.link_identities(db, merges)
    if merges:
        await db.execute(
            "UPDATE runs SET customer_id = m.c FROM unnest($1::text[], $2::text[]) AS m(a, c)"
            " WHERE runs.customer_id = m.a AND NOT EXISTS (SELECT 1 FROM runs r2 WHERE r2.customer_id = m.c"
            " AND r2.campaign_id = runs.campaign_id AND r2.trigger_id = runs.trigger_id)",
            list(merges),
            list(merges.values()),
        )
    changes = [e for e in batch if e.type in (EventType.STAGE_CHANGED, EventType.HEALTH_CHANGED)]
    if changes:
        customers = sorted({e.subject for e in changes})
        profiles = await store.profiles(db, customers)
        journeys = await decisions.journeys(db, customers, {})
        started = await store.started_triggers(db, customers)
        for envelope in changes:
            profile = profiles[envelope.subject]
            if envelope.type == EventType.STAGE_CHANGED:
                stage = str(envelope.data.get("to_stage"))
                profile.stage = stage
                # a customer enters each stage once: the stage is the trigger's identity, whatever the event id
                event = TriggerEvent("stage", envelope.subject, f"stage:{stage}", stage, _event_time(envelope))
            else:
                health = str(envelope.data.get("to_health"))
                profile.health = health
                event = TriggerEvent("health", envelope.subject, envelope.id, health, _event_time(envelope))
            journeys.on_trigger(event, profile, started[envelope.subject])
        await store.save_stages(db, profiles.values(), decisions.clock())
        await store.write_plan(db, journeys.plan, topic=decisions.events_topic, now=journeys.now)
    await store.erase(db, erased)


def touchpoint_handler(
    engine: AsyncEngine, decisions: Decisions, dedup_window: timedelta, after_commit: Callable[[], None] | None = None
) -> TransactionalHandler[AnyTouchpoint]:
    async def apply(db: Db, batch: Sequence[Consumed[AnyTouchpoint]]) -> list[AnyTouchpoint]:
        return await apply_touchpoints(db, [item.value for item in batch], decisions)

    return TransactionalHandler(
        engine,
        apply,
        id_of=lambda tp: tp.message_id,
        clock=decisions.clock,
        dedup_window=dedup_window,
        dedup=Dedup(TOUCHPOINT_DEDUP),
        after_commit=after_commit,
        remember_returned=True,
    )


def lifecycle_handler(
    engine: AsyncEngine, decisions: Decisions, dedup_window: timedelta, after_commit: Callable[[], None] | None = None
) -> TransactionalHandler[Envelope]:
    async def apply(db: Db, batch: Sequence[Consumed[Envelope]]) -> None:
        await apply_lifecycle(db, [item.value for item in batch], decisions)

    handler = cloudevent_handler(
        engine, apply, clock=decisions.clock, dedup_window=dedup_window, dedup=Dedup(EVENT_DEDUP)
    )
    handler.after_commit = after_commit
    return handler
