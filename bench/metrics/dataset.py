"""A year of a shop's touchpoints and the lifecycle events they lead to, generated per customer and reproducible.

Each customer gets a profile (visitor, engaged, trial, buyer, advocate) that decides which events
they send; the first touch carries ``context.campaign.source`` for about half of them. The
lifecycle CloudEvents (``clm.stage.changed``, ``clm.health.changed``) follow the customer's
touchpoints the way the default rules move stages, so the metrics see consistent facts; they are
generated here, not by the stage engine, so the benchmark times the metrics service alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cloudevents.core.bindings.kafka import KafkaMessage

from clm_cli.simulation.scores import csat_score, nps_score
from clm_shared.categories import categorize
from clm_shared.cloudevents import encode
from clm_shared.schemas.lifecycle import EventType, Health, HealthChanged, Stage, StageChanged
from clm_shared.schemas.touchpoint import Touchpoint

YEAR = timedelta(days=365)
SOURCES = ("google", "newsletter", "facebook", "podcast", "affiliate")
PAGES = ("Home", "Pricing", "Blog", "Features", "Docs")

# (event, weight) per profile; "page" is a page call, "checkout" a Checkout Started with, mostly, its order.
VISITOR = [("page", 8), ("Social Impression", 3), ("Podcast Listened", 1), ("Ad Impression", 1)]
ENGAGED = [
    *VISITOR,
    ("Social Followed", 1),
    ("Social Liked", 2),
    ("Social Commented", 1),
    ("Social Shared", 1),
    ("Podcast Downloaded", 1),
    ("Signed Up", 1),
    ("Email Opened", 2),
    ("NPS Survey Answered", 1),
]
TRIAL = [*ENGAGED, ("Trial Started", 3), ("Trial Converted", 2), ("Subscription Started", 1)]
BUYER = [*ENGAGED, ("checkout", 6), ("CSAT Survey Answered", 1)]
ADVOCATE = [*BUYER, ("Referral Sent", 2), ("Affiliate Sale", 1)]
PROFILES = [(VISITOR, 40), (ENGAGED, 25), (TRIAL, 10), (BUYER, 20), (ADVOCATE, 5)]

ENGAGING = {
    "Social Followed",
    "Social Liked",
    "Social Commented",
    "Social Shared",
    "Podcast Downloaded",
    "Signed Up",
    "Email Opened",
    "NPS Survey Answered",
    "Trial Started",
}
CONVERTING = {"Order Completed", "Trial Converted", "Subscription Started"}


@dataclass(frozen=True)
class Customer:
    touchpoints: list[Touchpoint]
    lifecycle: list[KafkaMessage]


def _call(
    customer: str, n: int, at: datetime, event: str, properties: dict[str, Any], context: dict[str, Any]
) -> Touchpoint:
    call = "page" if event == "page" else "track"
    name = PAGES[n % len(PAGES)] if call == "page" else event
    return Touchpoint(
        message_id=f"{customer}-{n}",
        type=call,
        customer_key=customer,
        user_id=customer,
        event=name,
        category=categorize(call, name),
        properties=properties,
        context=context,
        timestamp=at,
        received_at=at,
    )


def _properties(event: str, rng: random.Random) -> dict[str, Any]:
    if event == "Social Impression":
        return {"impressions": rng.randint(1, 500)}
    if event == "NPS Survey Answered":
        return {"score": nps_score(rng)}
    if event == "CSAT Survey Answered":
        return {"score": csat_score(rng)}
    if event == "Affiliate Sale":
        return {"revenue": round(rng.uniform(5, 80), 2)}
    return {}


def touchpoints_of(index: int, count: int, now: datetime) -> list[Touchpoint]:
    """``count`` touchpoints of customer ``index`` over the year before ``now``, oldest first."""
    rng = random.Random(index)
    customer = f"cust-{index}"
    pool = rng.choices([p for p, _ in PROFILES], weights=[w for _, w in PROFILES])[0]
    first = now - YEAR * rng.random()
    span = (now - first).total_seconds()
    times = sorted(first + timedelta(seconds=span * rng.random() ** 1.5) for _ in range(count - 1))
    source = {"campaign": {"source": rng.choice(SOURCES)}} if rng.random() < 0.5 else {}
    out = [_call(customer, 0, first, rng.choice(("page", "Social Impression", "Ad Impression")), {}, source)]
    events, weights = [e for e, _ in pool], [w for _, w in pool]
    for at in times:
        if len(out) >= count:
            break
        event = rng.choices(events, weights=weights)[0]
        if event != "checkout":
            out.append(_call(customer, len(out), at, event, _properties(event, rng), {}))
            continue
        checkout = {"checkout_id": f"k-{index}-{len(out)}"}
        out.append(_call(customer, len(out), at, "Checkout Started", checkout, {}))
        if len(out) < count and rng.random() < 0.7:  # 30% of checkouts are abandoned
            order = {**checkout, "revenue": round(rng.uniform(10, 300), 2)}
            after = at + timedelta(minutes=rng.uniform(1, 120))
            out.append(_call(customer, len(out), after, "Order Completed", order, {}))
    return out


def lifecycle_of(touchpoints: Sequence[Touchpoint], rng: random.Random, now: datetime) -> list[KafkaMessage]:
    """The stage and health changes a customer's touchpoints lead to, with the customer's sequence numbers."""
    customer = touchpoints[0].customer_key
    messages: list[KafkaMessage] = []
    stage: Stage | None = None
    health: Health | None = None
    orders = 0
    converted_at: datetime | None = None

    def publish(event_type: EventType, at: datetime, data: StageChanged | HealthChanged) -> None:
        sequence = len(messages) + 1
        messages.append(
            encode(
                event_id=f"ce-{customer}-{sequence}",
                event_type=event_type,
                service="stage-engine",
                customer_id=customer,
                sequence=sequence,
                time=at,
                data=data,
            )
        )

    for tp in touchpoints:
        name = tp.event or ""
        orders += name == "Order Completed"
        target = Stage.DISCOVERY
        if name in ENGAGING:
            target = Stage.ENGAGEMENT
        if name in CONVERTING:
            target = Stage.CONVERSION
        if converted_at is not None:
            if orders >= 2:
                target = max(target, Stage.RETENTION, key=lambda s: s.rank)
            if orders >= 3 or (name == "NPS Survey Answered" and tp.properties.get("score", 0) >= 9):
                target = max(target, Stage.LOYALTY, key=lambda s: s.rank)
            if name in ("Referral Sent", "Affiliate Sale"):
                target = Stage.ADVOCACY
        if stage is None or target.rank > stage.rank:
            data = StageChanged(
                customer_id=customer,
                from_stage=stage,
                to_stage=target,
                rule="bench",
                message_id=tp.message_id,
                event_time=tp.timestamp,
            )
            publish(EventType.STAGE_CHANGED, tp.timestamp, data)
            stage = target
            if target.rank >= Stage.CONVERSION.rank and converted_at is None:
                converted_at = tp.timestamp
                health = Health.ACTIVE
    if converted_at is not None and rng.random() < 0.3:
        # Some converted customers go quiet: at risk, then churned, a few come back.
        moves = [Health.AT_RISK, Health.CHURNED] + ([Health.REACTIVATED] if rng.random() < 0.3 else [])
        at = touchpoints[-1].timestamp
        for move in moves:
            at += timedelta(days=rng.uniform(10, 40))
            if at >= now:
                break
            data_h = HealthChanged(
                customer_id=customer, from_health=health, to_health=move, rule="bench", event_time=at
            )
            publish(EventType.HEALTH_CHANGED, at, data_h)
            health = move
    return messages


def customer(index: int, count: int, now: datetime) -> Customer:
    touchpoints = touchpoints_of(index, count, now)
    return Customer(touchpoints, lifecycle_of(touchpoints, random.Random(-index - 1), now))
