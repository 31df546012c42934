from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from clm_shared.categories import Category
from clm_shared.schemas.segment import AliasCall, IdentifyCall, PageCall, TrackCall
from ingest.normalize import MessageIds, corrected_timestamp, to_touchpoint
from tests.utils.factories import track_call

RECEIVED = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_clock_skew_is_corrected_from_sent_at() -> None:
    # The device clock is 1 hour fast: it says the event happened 10 s before it was sent.
    client_ts = RECEIVED + timedelta(hours=1) - timedelta(seconds=10)
    client_sent = RECEIVED + timedelta(hours=1)
    assert corrected_timestamp(client_ts, client_sent, RECEIVED) == RECEIVED - timedelta(seconds=10)


def test_timestamp_without_sent_at_is_kept_and_a_missing_one_is_received_at() -> None:
    ts = RECEIVED - timedelta(days=3)
    assert corrected_timestamp(ts, None, RECEIVED) == ts
    assert corrected_timestamp(None, RECEIVED, RECEIVED) == RECEIVED


def test_a_track_call_becomes_a_categorized_touchpoint_that_keeps_the_client_timestamp() -> None:
    call = TrackCall.model_validate(
        track_call("Order Completed", properties={"revenue": 20}, sentAt="2026-01-01T00:00:05Z")
    )
    tp = to_touchpoint(call, received_at=RECEIVED, source="shop-web")
    assert tp.category is Category.CONVERSION
    assert tp.original_timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    assert tp.timestamp == RECEIVED - timedelta(seconds=5)
    assert tp.received_at == RECEIVED
    assert (tp.message_id, tp.customer_key, tp.source, tp.revenue) == (call.message_id, "user-1", "shop-web", 20)


def test_a_missing_message_id_is_generated() -> None:
    body = track_call()
    del body["messageId"]
    tp = to_touchpoint(TrackCall.model_validate(body), received_at=RECEIVED, message_id=lambda: "generated-1")
    assert tp.message_id == "generated-1"


def test_naive_times_are_taken_as_utc() -> None:
    call = TrackCall.model_validate(track_call(timestamp="2026-01-01T00:00:00"))
    assert to_touchpoint(call, received_at=RECEIVED).timestamp == datetime(2026, 1, 1, tzinfo=UTC)


def test_batch_context_and_sent_at_fill_what_an_item_lacks() -> None:
    call = TrackCall.model_validate(track_call(context={"ip": "1.2.3.4"}, timestamp="2026-05-01T11:59:00Z"))
    tp = to_touchpoint(
        call,
        received_at=RECEIVED,
        batch_context={"library": {"name": "sdk"}, "ip": "9.9.9.9"},
        batch_sent_at=datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC),
    )
    assert tp.context == {"library": {"name": "sdk"}, "ip": "1.2.3.4"}
    assert tp.timestamp == datetime(2026, 5, 1, 11, 59, tzinfo=UTC)


def test_page_identify_and_alias_calls() -> None:
    page = to_touchpoint(
        PageCall.model_validate({"anonymousId": "a1", "name": "Pricing", "category": "Docs"}), received_at=RECEIVED
    )
    assert (page.category, page.event, page.customer_key) == (Category.DISCOVERY, "Pricing", "a1")
    assert page.properties["category"] == "Docs"
    identify = to_touchpoint(
        IdentifyCall.model_validate({"userId": "u1", "traits": {"email": "x@example.com"}}), received_at=RECEIVED
    )
    assert (identify.category, identify.traits) == (Category.IDENTITY, {"email": "x@example.com"})
    alias = to_touchpoint(AliasCall.model_validate({"userId": "u1", "previousId": "a1"}), received_at=RECEIVED)
    assert (alias.customer_key, alias.previous_id) == ("u1", "a1")


@given(st.datetimes(timezones=st.just(UTC)), st.datetimes(timezones=st.just(UTC)) | st.none())
def test_skew_correction_never_fails_whatever_the_client_clock_says(
    timestamp: datetime, sent_at: datetime | None
) -> None:
    corrected = corrected_timestamp(timestamp, sent_at, RECEIVED)
    assert corrected.tzinfo is not None
    if sent_at is None:
        assert corrected == timestamp


def test_generated_ids_are_distinct_version_4_uuids_even_past_the_pool() -> None:
    ids = MessageIds(3)
    made = [ids() for _ in range(5)]
    assert len(set(made)) == 5
    assert all(uuid.UUID(m).version == 4 for m in made)


@given(st.binary(min_size=160, max_size=160))
def test_generated_ids_are_written_as_the_uuid_module_writes_them(pool: bytes) -> None:
    ids = MessageIds(10, random=lambda size: pool[:size])
    assert [ids() for _ in range(10)] == [str(uuid.UUID(bytes=pool[i : i + 16], version=4)) for i in range(0, 160, 16)]
