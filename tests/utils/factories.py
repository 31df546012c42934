"""Factories for test data, instead of copied JSON blobs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from clm_shared.categories import categorize
from clm_shared.schemas.touchpoint import Touchpoint

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def touchpoint(
    event: str | None = "Product Viewed",
    *,
    customer: str = "user-1",
    call_type: str = "track",
    at: datetime = T0,
    anonymous_id: str | None = None,
    previous_id: str | None = None,
    traits: dict[str, Any] | None = None,
    message_id: str | None = None,
    **properties: Any,
) -> Touchpoint:
    """A touchpoint for ``customer`` (a userId; pass ``customer=None`` style anonymous ids via anonymous_id)."""
    user_id = None if customer.startswith("anon") else customer
    return Touchpoint(
        message_id=message_id or str(uuid.uuid4()),
        type=call_type,
        customer_key=user_id or anonymous_id or customer,
        user_id=user_id,
        anonymous_id=anonymous_id or (customer if user_id is None else None),
        event=event if call_type in ("track", "page", "screen") else None,
        category=categorize(call_type, event),
        properties=properties,
        traits=traits or {},
        previous_id=previous_id,
        timestamp=at,
        received_at=at,
    )


def track_call(event: str = "Product Viewed", **overrides: Any) -> dict[str, Any]:
    """A Segment track call as an SDK sends it."""
    body: dict[str, Any] = {
        "type": "track",
        "event": event,
        "userId": "user-1",
        "messageId": str(uuid.uuid4()),
        "timestamp": "2026-01-01T00:00:00Z",
        "properties": {},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
    }
    body.update(overrides)
    return body
