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

from clm_shared.categories import EVENT_CATEGORY, categorize
from clm_shared.schemas.touchpoint import TOUCHPOINT_SCHEMA_VERSION
from ingest.normalize import corrected_timestamp
from ingest.wire import WireAlias, WireGroup, WirePage, WireRequest, id_text

_OPTIONS = orjson.OPT_UTC_Z  # pydantic writes an offset of zero as "Z"

# ``categorize`` as a lookup: a call's category is fixed by its type, or for a track call by its event.
_TRACK_CATEGORIES = {event: category.value for event, category in EVENT_CATEGORY.items()}
_OTHER = categorize("track", None).value
_KIND_CATEGORIES = {kind: categorize(kind).value for kind in ("identify", "page", "screen", "group", "alias")}

# What a call without properties or traits writes; only ever read (by orjson).
_EMPTY: dict[str, Any] = {}

# The times of a call as written on the record: (timestamp, original_timestamp, sent_at).
_Times = tuple[str, str | None, str | None]


def touchpoint_records(
    request: WireRequest, *, received_at: datetime, source: str | None, message_id: Callable[[], str]
) -> list[tuple[bytes, bytes]]:
    """(key, value) per call; raises TypeError for a value JSON cannot hold (an integer over 64 bits).

    The calls of one request mostly share their date-times, so each distinct (timestamp, sentAt)
    pair is corrected and written as text once per request (the text orjson writes for the
    datetime), and a batch without its own context or integrations lends each call's dicts as they are.
    """
    records = []
    times = request.times
    request_sent_at = request.sent_at
    received = _text(received_at)
    written: dict[tuple[str | None, str | None], _Times] = {}
    batch_context, batch_integrations = request.context, request.integrations
    for kind, call, user_id, anonymous_id in request.calls:
        stamps = written.get((call.timestamp, call.sent_at))
        if stamps is None:
            stamps = written[call.timestamp, call.sent_at] = _times(
                times[call.timestamp] if call.timestamp is not None else None,
                times[call.sent_at] if call.sent_at is not None else request_sent_at,
                received_at,
                received,
            )
        customer_key = user_id or anonymous_id or ""
        event: str | None = None
        properties = traits = _EMPTY
        group_id = previous_id = None
        if kind == "track":
            event, properties = call.event, call.properties  # type: ignore[union-attr]
            category = _TRACK_CATEGORIES.get(event, _OTHER)
        else:
            category = _KIND_CATEGORIES[kind]
            if kind == "page" or kind == "screen":
                page: WirePage = call  # type: ignore[assignment]
                event, properties = page.name, page.properties
                if page.category is not None:
                    properties = {"category": page.category, **properties}
            elif kind == "identify":
                traits = call.traits  # type: ignore[union-attr]
            elif kind == "group":
                group: WireGroup = call  # type: ignore[assignment]
                traits, group_id = group.traits, id_text(group.group_id)
            else:
                alias: WireAlias = call  # type: ignore[assignment]
                previous_id = id_text(alias.previous_id)
        value = {
            "schema_version": TOUCHPOINT_SCHEMA_VERSION,
            "message_id": call.message_id or message_id(),
            "type": kind,
            "customer_key": customer_key,
            "user_id": user_id,
            "anonymous_id": anonymous_id,
            "event": event,
            "category": category,
            "properties": properties,
            "traits": traits,
            "context": {**batch_context, **call.context} if batch_context else call.context,
            "integrations": {**batch_integrations, **call.integrations} if batch_integrations else call.integrations,
            "group_id": group_id,
            "previous_id": previous_id,
            "timestamp": stamps[0],
            "original_timestamp": stamps[1],
            "sent_at": stamps[2],
            "received_at": received,
            "source": source,
        }
        records.append((customer_key.encode(), orjson.dumps(value)))  # every date-time is text by now
    return records


def _times(timestamp: datetime | None, sent_at: datetime | None, received_at: datetime, received: str) -> _Times:
    corrected = corrected_timestamp(timestamp, sent_at, received_at)
    return (
        received if corrected is received_at else _text(corrected),
        None if timestamp is None else _text(timestamp),
        None if sent_at is None else _text(sent_at),
    )


def _text(moment: datetime) -> str:
    """A date-time as orjson writes it in a record (ASCII only, so the same bytes as a JSON string)."""
    return orjson.dumps(moment, option=_OPTIONS)[1:-1].decode()
