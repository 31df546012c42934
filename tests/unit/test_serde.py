from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import DecodeError, JsonDeserializer, JsonSerializer
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
