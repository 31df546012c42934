"""CloudEvents 1.0 in Kafka structured mode, with the platform's ordering extension."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel

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


def encode(
    *,
    event_id: str,
    event_type: str,
    service: str,
    customer_id: str,
    sequence: int,
    time: datetime,
    data: BaseModel,
) -> KafkaMessage:
    """A structured-mode message keyed by the customer id.

    Written with orjson rather than through the SDK's JSON format (a third of the engine's encoding
    time); ``decode`` reads it back with the SDK, and the tests hold the two together.
    """
    value = orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "type": str(event_type),
            "source": SOURCE_PREFIX + service,
            "subject": customer_id,
            "time": time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            SEQUENCE_ATTR: sequence,
            "data": data.model_dump(mode="json"),
        }
    )
    return KafkaMessage(headers={"content-type": _FORMAT.CONTENT_TYPE.encode()}, key=customer_id.encode(), value=value)


def decode(value: bytes) -> Envelope:
    """Parse one structured-mode value; raises ValueError on anything that is not a valid event."""
    try:
        event = from_structured(KafkaMessage(headers={}, key=None, value=value), _FORMAT, CloudEvent)
    except Exception as exc:  # the SDK raises several unrelated types
        raise ValueError(f"not a CloudEvent: {exc}") from exc
    data = event.get_data()
    time = event.get_time()
    if not isinstance(data, dict) or time is None or event.get_subject() is None:
        raise ValueError("a lifecycle event needs JSON data, time and subject")
    return Envelope(
        id=event.get_id(),
        type=event.get_type(),
        source=event.get_source(),
        subject=str(event.get_subject()),
        time=time,
        sequence=int(event.get_extension(SEQUENCE_ATTR)),
        data=data,
    )
