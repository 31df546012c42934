"""What one input means for the metrics: touchpoint -> daily counters and key events; lifecycle event -> stages.

Pure: no database, no clock. The store (``metrics.store``) writes these facts; the queries
(``metrics.queries``) read them back as the definitions in ``docs/metrics.md`` say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from clm_shared.cloudevents import Envelope
from clm_shared.schemas.lifecycle import STAGE_ORDER, EventType, Stage
from clm_shared.schemas.touchpoint import AnyTouchpoint

# The per-customer, per-day counters (columns of ``daily_facts``), in one order.
COUNTERS: tuple[str, ...] = (
    "page_views",
    "social_impressions",
    "social_follows",
    "social_comments",
    "social_shares",
    "social_likes",
    "podcast_listens",
    "podcast_downloads",
    "orders",
    "order_revenue",
    "affiliate_revenue",
    "referrals_sent",
    "csat_answers",
    "csat_good",
)

# Track events counted one each.
_COUNTED = {
    "Social Followed": "social_follows",
    "Social Commented": "social_comments",
    "Social Shared": "social_shares",
    "Social Liked": "social_likes",
    "Podcast Listened": "podcast_listens",
    "Podcast Downloaded": "podcast_downloads",
    "Referral Sent": "referrals_sent",
}

# Events whose time, customer and properties the window definitions need one by one.
KEY_EVENTS = frozenset(
    {
        "Trial Started",
        "Trial Converted",
        "Subscription Started",
        "Checkout Started",
        "Order Completed",
        "NPS Survey Answered",
    }
)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ was a third of a touchpoint's time here
class KeyEvent:
    customer_id: str
    name: str
    at: datetime
    revenue: float
    score: float | None
    checkout_id: str | None


@dataclass(slots=True)
class TouchpointFacts:
    customer_id: str
    at: datetime
    source: str | None
    counters: dict[str, float] = field(default_factory=dict)
    key_event: KeyEvent | None = None

    @property
    def day(self) -> date:
        return self.at.astimezone(UTC).date()


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def campaign_source(context: dict[str, Any]) -> str | None:
    """``context.campaign.source``, the first-touch attribution the API filters by."""
    campaign = context.get("campaign")
    source = campaign.get("source") if isinstance(campaign, dict) else None
    return source if isinstance(source, str) and source else None


def touchpoint_facts(tp: AnyTouchpoint, customer_id: str) -> TouchpointFacts:
    """The counters and key event one touchpoint adds for ``customer_id`` (its key, aliases resolved)."""
    counters: dict[str, float] = {}
    key_event = None
    name = tp.event if tp.type == "track" else None
    if tp.type == "page":
        counters["page_views"] = 1
    elif name == "Social Impression":
        impressions = _number(tp.properties.get("impressions"))
        counters["social_impressions"] = impressions if impressions is not None and impressions >= 0 else 1
    elif name in _COUNTED:
        counters[_COUNTED[name]] = 1
    elif name == "Order Completed":
        counters["orders"] = 1
        counters["order_revenue"] = tp.revenue
    elif name == "Affiliate Sale":
        counters["affiliate_revenue"] = tp.revenue
    elif name == "CSAT Survey Answered":
        score = _number(tp.properties.get("score"))
        if score is not None:
            counters["csat_answers"] = 1
            counters["csat_good"] = 1 if score >= 4 else 0
    if name in KEY_EVENTS:
        checkout = tp.properties.get("checkout_id")
        key_event = KeyEvent(
            customer_id=customer_id,
            name=name,
            at=tp.timestamp,
            revenue=tp.revenue,
            score=_number(tp.properties.get("score")),
            checkout_id=str(checkout) if isinstance(checkout, str | int) and not isinstance(checkout, bool) else None,
        )
        if name == "NPS Survey Answered" and key_event.score is None:
            key_event = None  # an answer without a score says nothing
    return TouchpointFacts(customer_id, tp.timestamp, campaign_source(tp.context), counters, key_event)


@dataclass(frozen=True)
class StageReached:
    customer_id: str
    stages: tuple[Stage, ...]
    at: datetime


@dataclass(frozen=True)
class HealthMove:
    event_id: str
    customer_id: str
    health: str
    at: datetime


@dataclass(frozen=True)
class Merge:
    merged_id: str
    customer_id: str


@dataclass(frozen=True)
class Erasure:
    customer_id: str


@dataclass(frozen=True)
class CampaignEvent:
    day: date
    type: str
    campaign: str


LifecycleFact = StageReached | HealthMove | Merge | Erasure | CampaignEvent


def lifecycle_fact(event: Envelope) -> LifecycleFact | None:
    """What a lifecycle or campaign event changes in the metrics; None for what they ignore."""
    data = event.data
    if event.type == EventType.STAGE_CHANGED:
        to_stage = Stage(data["to_stage"])
        # Reaching a stage means every stage before it was reached too, at the latest then.
        reached = STAGE_ORDER[: to_stage.rank + 1]
        return StageReached(event.subject, reached, _time(data.get("event_time"), event.time))
    if event.type == EventType.HEALTH_CHANGED:
        return HealthMove(event.id, event.subject, str(data["to_health"]), _time(data.get("event_time"), event.time))
    if event.type == EventType.CUSTOMER_MERGED:
        return Merge(str(data["merged_id"]), event.subject)
    if event.type == EventType.CUSTOMER_ERASED:
        return Erasure(event.subject)
    if event.type.startswith("clm.campaign."):
        campaign = data.get("campaign_id") or data.get("campaign") or "unknown"
        return CampaignEvent(event.time.astimezone(UTC).date(), event.type.removeprefix("clm.campaign."), str(campaign))
    return None


def _time(value: Any, default: datetime) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return default
