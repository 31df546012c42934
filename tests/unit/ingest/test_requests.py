from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.requests import (
    ESCAPED_NUL,
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    Rejected,
    decode_body,
    parse_request,
    refuse_nul,
)
from tests.utils.factories import track_call


def rejection(body: bytes, endpoint: str = "track") -> Rejected:
    with pytest.raises(Rejected) as caught:
        parse_request(body, endpoint)
    return caught.value


def test_gzip_bodies_are_inflated_and_plain_ones_pass() -> None:
    raw = orjson.dumps(track_call())
    assert decode_body(gzip.compress(raw), "gzip") == raw
    assert decode_body(raw, None) == raw


@pytest.mark.parametrize(
    ("raw", "encoding", "status"),
    [
        (b"not gzip at all", "gzip", 400),
        (gzip.compress(b"{}")[:-6], "gzip", 400),
        (b"{}", "br", 400),
        (b"x" * (MAX_REQUEST_BYTES + 1), None, 413),
        (gzip.compress(b" " * (MAX_REQUEST_BYTES + 10)), "gzip", 413),
    ],
)
def test_bad_or_oversized_bodies(raw: bytes, encoding: str | None, status: int) -> None:
    with pytest.raises(Rejected) as caught:
        decode_body(raw, encoding)
    assert caught.value.status == status


def test_a_body_that_is_not_json_is_400() -> None:
    assert rejection(b"{nope").status == 400


def test_an_event_over_32_kb_is_413_even_inside_a_batch() -> None:
    big = track_call(properties={"blob": "x" * MAX_EVENT_BYTES})
    assert rejection(orjson.dumps(big)).status == 413
    assert rejection(orjson.dumps({"batch": [track_call(), big]}), "batch").status == 413


def test_an_invalid_event_names_its_fields() -> None:
    body = track_call(messageId="m" * 100)
    del body["event"]
    refusal = rejection(orjson.dumps(body))
    assert refusal.status == 422
    assert {(e["index"], e["field"]) for e in refusal.body()["errors"]} == {(0, "messageId"), (0, "event")}


def test_a_batch_is_refused_whole_with_the_index_and_field_of_each_error() -> None:
    body: dict[str, Any] = {
        "batch": [
            track_call(),
            {"type": "identify", "traits": {}},
            track_call(),
            {"type": "purchase", "userId": "u"},
            "not an object",
        ]
    }
    refusal = rejection(orjson.dumps(body), "batch")
    assert refusal.status == 422
    assert refusal.events == 5
    assert [(e["index"], e["field"]) for e in refusal.body()["errors"]] == [
        (1, "anonymousId"),
        (3, "type"),
        (4, "(event)"),
    ]


def test_a_valid_batch_keeps_its_own_context_and_write_key() -> None:
    body = {"batch": [track_call(), {"type": "page", "anonymousId": "a"}], "context": {"ip": "1"}, "writeKey": "k"}
    parsed = parse_request(orjson.dumps(body), "batch")
    assert [c.type for c in parsed.calls] == ["track", "page"]
    assert (parsed.context, parsed.write_key) == ({"ip": "1"}, "k")


def test_the_endpoint_decides_the_call_type() -> None:
    parsed = parse_request(orjson.dumps({"type": "track", "userId": "u", "traits": {"a": 1}}), "identify")
    assert parsed.calls[0].type == "identify"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly_or_accepted(raw: bytes) -> None:
    for endpoint in ("track", "batch"):
        try:
            parse_request(raw, endpoint)
        except Rejected as refusal:
            assert refusal.status in (400, 413, 422)


json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "userId",
                "anonymousId",
                "event",
                "messageId",
                "timestamp",
                "sentAt",
                "properties",
                "context",
                "batch",
                "previousId",
                "groupId",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_arbitrary_json_objects_are_refused_with_field_errors_or_accepted(payload: dict[str, Any]) -> None:
    for endpoint in ("track", "identify", "alias", "group", "batch"):
        try:
            parse_request(orjson.dumps(payload), endpoint)
        except Rejected as refusal:
            assert refusal.status in (413, 422)
            assert refusal.body()["errors"]


def nul_refusal(payload: Any, endpoint: str = "track") -> Rejected:
    assert ESCAPED_NUL in orjson.dumps(payload)
    with pytest.raises(Rejected) as caught:
        refuse_nul(payload, endpoint)
    return caught.value


def test_a_nul_anywhere_is_a_422_naming_each_field_and_event() -> None:
    refusal = nul_refusal(track_call(userId="a\x00b", properties={"list": ["ok", "x\x00"], "k\x00ey": 1}))
    assert refusal.status == 422
    assert {(e["index"], e["type"], e["field"]) for e in refusal.body()["errors"]} == {
        (0, "track", "userId"),
        (0, "track", "properties.list.1"),
        (0, "track", "properties.k\x00ey"),
    }
    batch = {"batch": [track_call(), {**track_call(), "event": "\x00"}], "context": {"ip": "\x00"}}
    assert {(e["index"], e["field"]) for e in nul_refusal(batch, "batch").body()["errors"]} == {
        (1, "event"),
        (None, "context.ip"),
    }


def test_other_control_characters_and_an_escaped_backslash_u0000_pass() -> None:
    refuse_nul(track_call(properties={"c": "\x01\x1f\x7f\u200f", "text": "\\u0000"}), "track")
    assert ESCAPED_NUL in orjson.dumps({"text": "\\u0000"})
