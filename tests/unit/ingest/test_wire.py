"""The msgspec fast path writes the very bytes the pydantic path writes, and accepts nothing it refuses."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.normalize import to_touchpoint
from ingest.publishing import encode
from ingest.records import touchpoint_records
from ingest.requests import MAX_EVENT_BYTES, Rejected, parse_request
from ingest.wire import decode_request
from tests.utils.factories import track_call

RECEIVED = datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
ENDPOINTS = ("track", "identify", "page", "screen", "group", "alias", "batch")


def as_json(value: Any) -> bytes:
    """JSON text as a client may write it (orjson refuses integers over 64 bits; clients send them)."""
    return json.dumps(value, ensure_ascii=False).encode()


def ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"generated-{next(counter)}"


def pydantic_path(body: bytes, endpoint: str, received_at: datetime = RECEIVED) -> list[tuple[bytes, bytes]] | None:
    """What ingest published before the fast path (None: refused)."""
    try:
        parsed = parse_request(body, endpoint)
    except Rejected:
        return None
    message_id = ids()
    touchpoints = [
        to_touchpoint(
            call,
            received_at=received_at,
            source="shop-web",
            batch_context=parsed.context,
            batch_integrations=parsed.integrations,
            batch_sent_at=parsed.sent_at,
            message_id=message_id,
        )
        for call in parsed.calls
    ]
    return encode(touchpoints)


def fast_path(body: bytes, endpoint: str, received_at: datetime = RECEIVED) -> list[tuple[bytes, bytes]] | None:
    """What the fast path publishes (None: it leaves the request to the pydantic path)."""
    request = decode_request(body, endpoint)
    if request is None:
        return None
    try:
        return touchpoint_records(request, received_at=received_at, source="shop-web", message_id=ids())
    except TypeError:
        return None


def same(body: bytes, endpoint: str, received_at: datetime = RECEIVED) -> bool:
    """Asserts the fast path is never looser nor different; returns whether it took the request."""
    fast = fast_path(body, endpoint, received_at)
    if fast is None:
        return False
    assert fast == pydantic_path(body, endpoint, received_at), body
    return True


CALLS: list[dict[str, Any]] = [
    track_call(),
    track_call("Order Completed", properties={"revenue": 19.99, "total": 1e16, "big": 2**63, "neg": -(2**63)}),
    {**track_call(), "messageId": None, "timestamp": "2026-01-01T00:00:00.123+02:00", "sentAt": "2026-01-01T00:00:05Z"},
    {**track_call(), "timestamp": "2026-01-01T00:00:00", "sentAt": "2026-01-01T00:00:01.5-05:30"},
    {**track_call(), "timestamp": "2026-01-01T00:00:00.123456-00:00", "integrations": {"All": False, "Mixpanel": True}},
    {"type": "track", "anonymousId": "anon-1", "userId": "", "event": "Ad Impression", "properties": {"x": [1, None]}},
    {"type": "track", "userId": 42, "event": "Signed Up", "context": {"é": "ünï \u2028 \U0001f600", "c": "\x00\x1f"}},
    {"type": "track", "userId": "u", "anonymousId": 7, "event": "Referral Sent", "properties": {"n": -0.0, "f": 5e-32}},
    {"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com", "plan": "pro", "nested": {"a": {}}}},
    {"type": "identify", "anonymousId": "a1"},
    {"type": "page", "anonymousId": "a1", "name": "Pricing", "category": "Docs", "properties": {"category": "old"}},
    {"type": "page", "userId": "u1", "properties": {"url": "https://shop.example/p?q=1&r=/"}},
    {"type": "screen", "userId": "u1", "name": "Home", "category": None},
    {"type": "group", "userId": "u1", "groupId": "acme", "traits": {"plan": "team"}},
    {"type": "group", "userId": "u1", "groupId": 12345},
    {"type": "alias", "userId": "u1", "previousId": "anon-1", "sentAt": "2026-05-01T11:59:59.999999Z"},
    {"type": "alias", "userId": "u1", "previousId": 99, "writeKey": "k"},
    {**track_call(), "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"},
]


@pytest.mark.parametrize("call", CALLS, ids=lambda call: str(call.get("type")))
def test_each_call_alone_gives_the_same_record_and_takes_the_fast_path(call: dict[str, Any]) -> None:
    assert same(orjson.dumps(call), call["type"])


def test_batches_with_their_own_context_and_sent_at_give_the_same_records() -> None:
    bodies: list[dict[str, Any]] = [
        {"batch": CALLS},
        {"batch": CALLS, "context": {"ip": "10.0.0.1", "library": {"name": "x"}}, "integrations": {"All": True}},
        {"batch": CALLS, "sentAt": "2026-05-01T12:00:01+00:00", "writeKey": 5},
        {"batch": []},
    ]
    for body in bodies:
        assert same(orjson.dumps(body), "batch")


@pytest.mark.parametrize(
    ("body", "endpoint"),
    [
        (b'{"userId": "u", "event": "E", "channel": "server"}', "track"),  # an unknown field
        (b'{"userId": 1.5, "event": "E"}', "track"),  # a float id
        (b'{"userId": true, "event": "E"}', "track"),
        (b'{"userId": "u", "event": "E", "timestamp": 1700000000}', "track"),  # a Unix time
        (b'{"userId": "u", "event": "E", "timestamp": "2026-01-01 00:00:00"}', "track"),
        ('{"userId": "u", "event": "E", "timestamp": "\u0662\u0660\u0662\u0666-01-01T00:00:00Z"}'.encode(), "track"),
        (b'{"userId": "u", "event": "E", "properties": {"n": 18446744073709551616}}', "track"),  # orjson: a float
        (b'{"userId": 18446744073709551616, "event": "E"}', "track"),
        (b'{"batch": [{"type": "track", "type": "identify", "userId": "u", "event": "E"}]}', "batch"),
        (b'{"batch": [{"userId": "u", "event": "E"}]}', "batch"),
        (b'{"batch": [], "extra": 1}', "batch"),
    ],
)
def test_what_the_fast_path_does_not_read_goes_to_pydantic_with_the_same_result(body: bytes, endpoint: str) -> None:
    assert not same(body, endpoint)


@pytest.mark.parametrize(
    "body",
    [
        b'{"userId": "u", "event": "E", "x": 1e400}',
        b'{"userId": "u", "event": "E", "properties": {"s": "\\ud800"}}',
        b'{"userId": "u", "event": "E", "properties": {"s": "\xff"}}',
        b'{"userId": "u", "event": "E",}',
        b'{"userId": "u", "event": ""}',
        b'{"anonymousId": "", "event": "E"}',
        b'{"userId": "u", "event": "E", "messageId": "' + b"m" * 100 + b'"}',
        b'{"userId": "' + b"u" * 1025 + b'", "event": "E"}',
        b'{"userId": "u", "event": "E", "context": null}',
        b'{"userId": "u", "event": "E", "writeKey": 5}',
    ],
)
def test_bodies_the_pydantic_path_refuses_are_not_taken_by_the_fast_path(body: bytes) -> None:
    assert fast_path(body, "track") is None
    assert pydantic_path(body, "track") is None


def test_large_events_are_measured_by_the_pydantic_path() -> None:
    near = track_call(properties={"blob": "x" * (MAX_EVENT_BYTES - 500)})
    assert fast_path(orjson.dumps(near), "track") is None
    assert pydantic_path(orjson.dumps(near), "track") is not None


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**65)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
times = st.datetimes(timezones=st.just(UTC) | st.none()).map(lambda t: t.isoformat()) | st.sampled_from(
    ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.5+05:30", "2026-01-01T00:00:00-08:00", "2026-13-01T00:00:00Z"]
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "purchase"]),
        "userId": st.text(max_size=3) | st.integers(-5, 5) | st.none() | st.booleans(),
        "anonymousId": st.text(max_size=3) | st.integers(-5, 5) | st.none(),
        "messageId": st.text(max_size=3) | st.none(),
        "event": st.text(max_size=5) | st.none() | st.integers(),
        "name": st.text(max_size=5) | st.none(),
        "category": st.text(max_size=5) | st.none(),
        "groupId": st.text(max_size=3) | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False),
        "previousId": st.text(max_size=3) | st.integers(-5, 5),
        "timestamp": times | st.none() | st.integers(0, 2**31),
        "sentAt": times | st.none(),
        "properties": st.dictionaries(st.text(max_size=5), json_values, max_size=4) | st.none(),
        "traits": st.dictionaries(st.text(max_size=5), json_values, max_size=4),
        "context": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        "integrations": st.dictionaries(st.text(max_size=5), st.booleans(), max_size=2),
        "writeKey": st.text(max_size=3) | st.integers(),
    },
)

objects = st.dictionaries(st.text(max_size=5), json_values, max_size=4)
ids_ = st.text(min_size=1, max_size=8) | st.integers(-(2**70), 2**70)
valid_times = st.datetimes(timezones=st.just(UTC) | st.none()).map(lambda t: t.isoformat()) | st.sampled_from(
    ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.5+05:30", "2026-01-01T00:00:00.123-08:00"]
)
common: dict[str, st.SearchStrategy[Any]] = {"messageId": st.text(min_size=1, max_size=5), "context": objects}
common["integrations"] = objects
common |= {"timestamp": valid_times, "sentAt": valid_times, "anonymousId": ids_}
plausible_calls = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("track"), "userId": ids_, "event": st.text(min_size=1, max_size=8)},
        optional={**common, "properties": objects},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["page", "screen"]), "userId": ids_},
        optional={**common, "properties": objects, "name": st.text(max_size=5), "category": st.text(max_size=5)},
    ),
    st.fixed_dictionaries({"type": st.just("identify"), "userId": ids_}, optional={**common, "traits": objects}),
    st.fixed_dictionaries(
        {"type": st.just("group"), "userId": ids_, "groupId": ids_}, optional={**common, "traits": objects}
    ),
    st.fixed_dictionaries({"type": st.just("alias"), "userId": ids_, "previousId": ids_}, optional=common),
)


@settings(max_examples=300)
@given(plausible_calls)
def test_plausible_calls_give_the_same_records(call: dict[str, Any]) -> None:
    same(as_json(call), call["type"])
    same(as_json({"batch": [call, call], "context": {"k": 1}, "sentAt": "2026-05-01T12:00:00Z"}), "batch")


@settings(max_examples=300)
@given(fields, st.sampled_from(ENDPOINTS[:-1]))
def test_arbitrary_calls_give_the_same_records_or_go_to_pydantic(call: dict[str, Any], endpoint: str) -> None:
    same(as_json(call), endpoint)


@settings(max_examples=200)
@given(
    st.lists(fields, max_size=5),
    st.dictionaries(st.text(max_size=5), json_values, max_size=2),
    times | st.none(),
    st.datetimes(timezones=st.just(UTC)),
)
def test_arbitrary_batches_give_the_same_records_or_go_to_pydantic(
    items: list[dict[str, Any]], context: dict[str, Any], sent_at: str | None, received_at: datetime
) -> None:
    body: dict[str, Any] = {"batch": items, "context": context}
    if sent_at is not None:
        body["sentAt"] = sent_at
    same(as_json(body), "batch", received_at)
