"""Fast-path calls straight to the touchpoint records on the topic, without a pydantic model (pure).

The bytes are those ``normalize.to_touchpoint`` and the pydantic serializer write for the same call:
the same fields in the same order, the same values, times as pydantic writes them (``Z`` for UTC).
``tests/unit/ingest/test_wire.py`` compares the two for a varied set of calls.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from clm_shared.categories import categorize
from clm_shared.schemas.touchpoint import TOUCHPOINT_SCHEMA_VERSION
from ingest.normalize import corrected_timestamp
from ingest.wire import WireAlias, WireGroup, WirePage, WireRequest, WireTrack, id_text

_OPTIONS = orjson.OPT_UTC_Z  # pydantic writes an offset of zero as "Z"


def touchpoint_records(
    request: WireRequest, *, received_at: datetime, source: str | None, message_id: Callable[[], str]
) -> list[tuple[bytes, bytes]]:
    """(key, value) per call; raises TypeError for a value JSON cannot hold (an integer over 64 bits)."""
    records = []
    times = request.times
    for kind, call, user_id, anonymous_id in request.calls:
        sent_at = times[call.sent_at] if call.sent_at is not None else request.sent_at
        timestamp = times[call.timestamp] if call.timestamp is not None else None
        customer_key = user_id or anonymous_id or ""
        event: str | None = None
        properties: dict[str, Any] = {}
        traits: dict[str, Any] = {}
        group_id = previous_id = None
        if isinstance(call, WireTrack):
            event, properties = call.event, call.properties
        elif isinstance(call, WirePage):  # and screen calls
            event, properties = call.name, call.properties
            if call.category is not None:
                properties = {"category": call.category, **properties}
        elif isinstance(call, WireGroup):
            traits, group_id = call.traits, id_text(call.group_id)
        elif isinstance(call, WireAlias):
            previous_id = id_text(call.previous_id)
        else:
            traits = call.traits
        value = {
            "schema_version": TOUCHPOINT_SCHEMA_VERSION,
            "message_id": call.message_id or message_id(),
            "type": kind,
            "customer_key": customer_key,
            "user_id": user_id,
            "anonymous_id": anonymous_id,
            "event": event,
            "category": categorize(kind, event).value,
            "properties": properties,
            "traits": traits,
            "context": {**request.context, **call.context},
            "integrations": {**request.integrations, **call.integrations},
            "group_id": group_id,
            "previous_id": previous_id,
            "timestamp": corrected_timestamp(timestamp, sent_at, received_at),
            "original_timestamp": timestamp,
            "sent_at": sent_at,
            "received_at": received_at,
            "source": source,
        }
        records.append((customer_key.encode(), orjson.dumps(value, option=_OPTIONS)))
    return records
