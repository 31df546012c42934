from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from clm_shared.schemas.segment import AliasCall, AnyCall, BatchCall, IdentifyCall, TrackCall
from tests.utils.factories import track_call

ANY_CALL: TypeAdapter[AnyCall] = TypeAdapter(AnyCall)


def test_a_track_call_keeps_every_segment_field() -> None:
    call = TrackCall.model_validate(
        track_call("Order Completed", properties={"revenue": 12.5}, sentAt="2026-01-01T00:00:01Z")
    )
    assert call.event == "Order Completed"
    assert call.properties == {"revenue": 12.5}
    assert call.context["library"]["name"] == "analytics-python"
    assert call.sent_at is not None
    assert call.customer_key == "user-1"


def test_message_id_of_100_characters_is_rejected_and_99_accepted() -> None:
    TrackCall.model_validate(track_call(messageId="m" * 99))
    with pytest.raises(ValidationError, match="messageId"):
        TrackCall.model_validate(track_call(messageId="m" * 100))


def test_a_call_needs_user_id_or_anonymous_id() -> None:
    body = track_call()
    del body["userId"]
    with pytest.raises(ValidationError, match="userId or anonymousId"):
        TrackCall.model_validate(body)
    anonymous = TrackCall.model_validate({**body, "anonymousId": "anon-7"})
    assert anonymous.customer_key == "anon-7"


def test_track_needs_an_event_name() -> None:
    body = track_call()
    del body["event"]
    with pytest.raises(ValidationError, match="event"):
        TrackCall.model_validate(body)


def test_numeric_ids_are_kept_as_text() -> None:
    call = IdentifyCall.model_validate({"userId": 42, "traits": {"email": "a@example.com"}})
    assert call.user_id == "42"


def test_alias_needs_previous_id() -> None:
    with pytest.raises(ValidationError, match="previousId"):
        AliasCall.model_validate({"userId": "u1"})
    assert AliasCall.model_validate({"userId": "u1", "previousId": "anon-1"}).previous_id == "anon-1"


def test_batch_items_are_parsed_by_their_type() -> None:
    batch = BatchCall.model_validate(
        {
            "batch": [
                track_call(),
                {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
                {"type": "page", "anonymousId": "a1", "name": "Home"},
                {"type": "screen", "anonymousId": "a1", "name": "Feed"},
                {"type": "group", "userId": "u1", "groupId": "g1"},
                {"type": "alias", "userId": "u1", "previousId": "a1"},
            ]
        }
    )
    assert [item.type for item in batch.batch] == ["track", "identify", "page", "screen", "group", "alias"]


def test_an_unknown_call_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        ANY_CALL.validate_python({"type": "purchase", "userId": "u1"})


def test_a_batch_holds_at_most_2500_events() -> None:
    BatchCall.model_validate({"batch": [track_call()] * 2500})
    with pytest.raises(ValidationError, match="2500"):
        BatchCall.model_validate({"batch": [track_call()] * 2501})
