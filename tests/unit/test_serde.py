from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clm_shared.schemas.touchpoint import Touchpoint, TouchpointRecord
from clm_shared.serde import DecodeError, JsonDeserializer, JsonSerializer, StructDeserializer
from tests.utils.factories import touchpoint

serialize = JsonSerializer()
deserialize = JsonDeserializer(Touchpoint)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@given(properties=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=5))
def test_a_touchpoint_survives_the_round_trip(properties: dict[str, Any]) -> None:
    original = touchpoint("Order Completed", **{}).model_copy(update={"properties": properties})
    assert deserialize(serialize(original)) == original


def test_revenue_falls_back_to_total_then_zero() -> None:
    assert touchpoint("Order Completed", revenue=30, total=40).revenue == 30
    assert touchpoint("Order Completed", total=40).revenue == 40
    assert touchpoint("Order Completed", revenue="lots").revenue == 0
    assert touchpoint("Order Completed").revenue == 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "empty"),
        (b"\xff\xfe not json", "not JSON"),
        (b"[1, 2]", "invalid Touchpoint"),
        (orjson.dumps({"message_id": "m1"}), "customer_key"),
    ],
)
def test_undecodable_records_raise_a_decode_error_that_says_why(raw: bytes | None, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        deserialize(raw)


decode_record = StructDeserializer(TouchpointRecord, "Touchpoint")


def test_the_engines_record_mirrors_the_touchpoint_model() -> None:
    assert set(TouchpointRecord.__struct_fields__) == set(Touchpoint.model_fields)


@given(properties=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=5))
def test_a_touchpoint_decodes_to_the_same_record_either_way(properties: dict[str, Any]) -> None:
    original = touchpoint("Order Completed", anonymous_id="anon-1", traits={"plan": "pro"}).model_copy(
        update={"properties": properties}
    )
    record = decode_record(serialize(original))
    assert {name: getattr(record, name) for name in Touchpoint.model_fields} == original.model_dump()
    assert record.revenue == original.revenue


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "empty"),
        (b"\xff\xfe not json", "not JSON"),
        (b"[1, 2]", "invalid Touchpoint: \\(root\\)"),
        (orjson.dumps({"message_id": "m1"}), "invalid Touchpoint: type: .*required"),
        (orjson.dumps({**orjson.loads(serialize(touchpoint())), "message_id": ""}), "invalid Touchpoint: message_id"),
        (orjson.dumps({**orjson.loads(serialize(touchpoint())), "category": "x"}), "invalid Touchpoint: category"),
        (orjson.dumps({**orjson.loads(serialize(touchpoint())), "extra": 1}), "invalid Touchpoint: extra: .*unknown"),
    ],
)
def test_the_record_decoder_refuses_what_the_model_refuses(raw: bytes | None, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_record(raw)
    with pytest.raises(DecodeError):
        deserialize(raw)
