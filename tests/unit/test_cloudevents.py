from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given
from hypothesis import strategies as st

from clm_shared.cloudevents import CloudEventDeserializer, Envelope, decode, encode
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


def _sdk_reading(value: bytes) -> Envelope:
    """The CloudEvents SDK's own reading of a structured-mode value: what ``decode`` must agree with."""
    event = from_structured(KafkaMessage(headers={}, key=None, value=value), JSONFormat(), CloudEvent)
    data, time = event.get_data(), event.get_time()
    assert isinstance(data, dict) and time is not None
    return Envelope(
        event.get_id(),
        event.get_type(),
        event.get_source(),
        str(event.get_subject()),
        time,
        int(event.get_extension("sequence")),
        data,
    )


_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(
    event_id=_TEXT,
    subject=_TEXT,
    event_type=st.sampled_from(sorted(LIFECYCLE_EVENT_TYPES | CAMPAIGN_EVENT_TYPES)),
    sequence=st.integers(1, 2**62),
    time=st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
    ),
    utc_as_z=st.booleans(),
    data=st.dictionaries(_TEXT, _JSON, min_size=1, max_size=4),
)
def test_decode_reads_every_event_as_the_cloudevents_sdk_does(
    event_id: str,
    subject: str,
    event_type: str,
    sequence: int,
    time: datetime,
    utc_as_z: bool,
    data: dict[str, object],
) -> None:
    stamp = time.isoformat()
    if utc_as_z:
        stamp = stamp.replace("+00:00", "Z")
    value = _event(id=event_id, subject=subject, type=event_type, sequence=sequence, time=stamp, data=data)
    decoded = decode(value)
    assert decoded == _sdk_reading(value)
    assert decoded.time == time and decoded.time.utcoffset() == time.utcoffset()


def test_empty_data_is_an_empty_object_where_the_sdk_reads_none() -> None:
    assert decode(_event(data={})).data == {}


@pytest.mark.parametrize("stamp", ["2026-03-01", "2026-03-01T12:00:00", "2026-03-01 12:00:00Z", "12:00:00Z", "x" * 25])
def test_a_time_that_is_not_rfc_3339_is_a_decode_error(stamp: str) -> None:
    with pytest.raises(DecodeError, match="RFC 3339"):
        decode(_event(time=stamp))
