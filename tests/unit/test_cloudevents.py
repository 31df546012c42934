from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from clm_shared.cloudevents import CloudEventDeserializer, decode, encode
from clm_shared.schemas.lifecycle import (
    CAMPAIGN_EVENT_TYPES,
    LIFECYCLE_EVENT_TYPES,
    EventType,
    Stage,
    StageChanged,
)
from clm_shared.serde import DecodeError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_stage_change_is_a_structured_cloudevent_keyed_by_customer() -> None:
    change = StageChanged(
        customer_id="u1",
        from_stage=Stage.DISCOVERY,
        to_stage=Stage.CONVERSION,
        skipped=[Stage.ENGAGEMENT],
        rule="first_order",
        message_id="m1",
        event_time=NOW,
    )
    message = encode(
        event_id="e1",
        event_type=EventType.STAGE_CHANGED,
        service="stage-engine",
        customer_id="u1",
        sequence=7,
        time=NOW,
        data=change,
    )
    assert message.key == b"u1"
    assert message.headers["content-type"] == b"application/cloudevents+json"
    body = orjson.loads(message.value)
    assert body["specversion"] == "1.0" and body["type"] == "clm.stage.changed"
    envelope = decode(message.value)
    assert (envelope.id, envelope.subject, envelope.sequence) == ("e1", "u1", 7)
    assert StageChanged.model_validate(envelope.data) == change


@pytest.mark.parametrize("value", [b"{}", b"not json", orjson.dumps({"specversion": "1.0", "id": "x"})])
def test_anything_else_is_rejected(value: bytes) -> None:
    with pytest.raises(ValueError):
        decode(value)


def _event(**changes: object) -> bytes:
    body: dict[str, object] = {
        "specversion": "1.0",
        "id": "e1",
        "type": "clm.stage.changed",
        "source": "urn:clm:stage-engine",
        "subject": "u1",
        "time": "2026-03-01T12:00:00Z",
        "datacontenttype": "application/json",
        "sequence": 3,
        "data": {"customer_id": "u1"},
    }
    for name, value in changes.items():
        if value is None:
            body.pop(name)
        else:
            body[name] = value
    return orjson.dumps(body)


@pytest.mark.parametrize(
    "value",
    [
        b"{not json",
        b"null",
        b"[1, 2]",
        _event(sequence=None),
        _event(sequence="3"),
        _event(sequence=True),
        _event(sequence=0),
        _event(specversion=None),
        _event(specversion="0.3"),
        _event(id=5),
        _event(id=None),
        _event(subject=None),
        _event(subject=7),
        _event(time=None),
        _event(time="yesterday"),
        _event(data=[1]),
        _event(type="clm.unheard.of"),
        None,
    ],
)
def test_every_malformed_lifecycle_event_is_one_decode_error(value: bytes | None) -> None:
    with pytest.raises(DecodeError):
        CloudEventDeserializer()(value, topic="clm.stage-changes.v1")


def test_the_deserializer_knows_the_lifecycle_types_and_can_learn_more() -> None:
    deserialize = CloudEventDeserializer()
    assert deserialize.types == LIFECYCLE_EVENT_TYPES
    for event_type in LIFECYCLE_EVENT_TYPES:
        assert deserialize(_event(type=event_type)).type == event_type
    with pytest.raises(DecodeError, match="unknown event type"):
        deserialize(_event(type="clm.campaign.sent"))
    both = deserialize.with_types(*CAMPAIGN_EVENT_TYPES)
    assert both(_event(type="clm.campaign.sent")).sequence == 3
