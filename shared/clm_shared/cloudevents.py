"""CloudEvents 1.0 in Kafka structured mode, with the platform's ordering extension."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cloudevents.core.bindings.kafka import KafkaMessage
from cloudevents.core.formats.json import JSONFormat
from pydantic import BaseModel

from clm_shared.kafka.producer import OutgoingRecord
from clm_shared.schemas.lifecycle import LIFECYCLE_EVENT_TYPES
from clm_shared.serde import DecodeError, Headers

SOURCE_PREFIX = "urn:clm:"
# Extension attribute: a per-customer, gap-free sequence number so subscribers detect gaps.
SEQUENCE_ATTR = "sequence"

_FORMAT = JSONFormat()


@dataclass(frozen=True)
class Envelope:
    """What a subscriber needs from a lifecycle event, with the data still as a dict."""

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    sequence: int
    data: dict[str, Any]


# The one header of every structured-mode record.
HEADERS: tuple[tuple[str, bytes], ...] = (("content-type", _FORMAT.CONTENT_TYPE.encode()),)


def encode(
    *,
    event_id: str,
    event_type: str,
    service: str,
    customer_id: str,
    sequence: int,
    time: datetime,
    data: BaseModel | dict[str, Any],
) -> KafkaMessage:
    """The event as the SDK's Kafka message: ``to_record`` for callers that want that type."""
    record = to_record(
        "",
        event_id=event_id,
        event_type=event_type,
        service=service,
        customer_id=customer_id,
        sequence=sequence,
        time=time,
        data=data,
    )
    return KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)


def to_record(
    topic: str,
    *,
    event_id: str,
    event_type: str,
    service: str,
    customer_id: str,
    sequence: int,
    time: datetime,
    data: BaseModel | dict[str, Any],
) -> OutgoingRecord:
    """A structured-mode CloudEvent as an outgoing (outbox) record for ``topic``, keyed by the customer id.

    Written with orjson rather than through the SDK's JSON format (a third of the engine's encoding
    time); ``decode`` reads it back as the SDK does, and the tests hold the two together. ``data`` is
    a model, or for hot paths the same fields as a plain dict (enums and UTC times as orjson writes
    them, which is as pydantic writes them: no model built and dumped per event). Times go to orjson
    as they are: it writes RFC 3339 as ``isoformat`` does, with ``Z`` for UTC, at a tenth of the cost.
    """
    value = orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "type": str(event_type),
            "source": SOURCE_PREFIX + service,
            "subject": customer_id,
            "time": time,
            "datacontenttype": "application/json",
            SEQUENCE_ATTR: sequence,
            # dict first: isinstance against a pydantic model class goes through ABCMeta, slow per event.
            "data": data if isinstance(data, dict) else data.model_dump(mode="json"),
        },
        option=orjson.OPT_UTC_Z,
    )
    return OutgoingRecord(topic, value, key=customer_id.encode(), headers=HEADERS)


def decode(value: bytes | None, *, types: Collection[str] | None = None) -> Envelope:
    """Parse one structured-mode value; anything that is not a valid lifecycle event is a DecodeError.

    With ``types``, an event of any other type is a DecodeError too. Parsed once with orjson: the SDK's
    second parse (and its timestamp parser) was a tenth of a subscriber's CPU. The tests hold this to
    the SDK's own reading of the same bytes.
    """
    if value is None:
        raise DecodeError("empty record value")
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise DecodeError("not a CloudEvent: the value is not a JSON object")
    if body.get("specversion") != "1.0":
        raise DecodeError(f"not a CloudEvent 1.0: specversion is {body.get('specversion')!r}")
    for name in ("id", "source", "type", "subject", "time"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise DecodeError(f"{name}: a non-empty string is required, got {body.get(name)!r}")
    sequence = body.get(SEQUENCE_ATTR)
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise DecodeError(f"{SEQUENCE_ATTR}: a positive integer is required, got {sequence!r}")
    if types is not None and body.get("type") not in types:
        raise DecodeError(f"type: unknown event type {body.get('type')!r}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise DecodeError("data: a lifecycle event needs JSON object data")
    time = _rfc3339(body["time"])
    return Envelope(
        id=body["id"],
        type=body["type"],
        source=body["source"],
        subject=body["subject"],
        time=time,
        sequence=sequence,
        data=data,
    )


def _rfc3339(text: str) -> datetime:
    """A CloudEvent's time: RFC 3339, so a date, a ``T``, a time and an offset (``Z`` or ``±hh:mm``)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or len(text) < 20 or text[10] not in "Tt":
        raise DecodeError(f"time: an RFC 3339 time is required, got {text!r}")
    return parsed


class CloudEventDeserializer:
    """For ``ConsumerLoop``: bytes to an ``Envelope`` of one of the known types, else a DecodeError."""

    def __init__(self, types: Iterable[str] = LIFECYCLE_EVENT_TYPES) -> None:
        self.types = frozenset(str(t) for t in types)

    def with_types(self, *more: str) -> CloudEventDeserializer:
        """The same deserializer knowing more event types (campaign events, a later version...)."""
        return CloudEventDeserializer(self.types | set(more))

    def __call__(self, value: bytes | None, *, topic: str = "", headers: Headers = ()) -> Envelope:
        return decode(value, types=self.types)
