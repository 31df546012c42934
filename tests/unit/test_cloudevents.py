from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from clm_shared.cloudevents import decode, encode
from clm_shared.schemas.lifecycle import EventType, Stage, StageChanged

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
