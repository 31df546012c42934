from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest

from clm_shared.schemas.lifecycle import Stage
from stage_engine.lifecycle import STATE_VERSION, CustomerState
from stage_engine.stored_state import UPGRADES, StoredStateError, dump_state, load_state, upgrade

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_state_round_trips_with_its_version() -> None:
    state = CustomerState(customer_id="c1", stage=Stage.CONVERSION, signal_counts={"orders": 2}, first_seen_at=T0)
    stored = dump_state(state)
    assert msgspec.msgpack.decode(stored)["version"] == STATE_VERSION
    assert load_state(stored) == state


def test_a_json_row_of_an_earlier_engine_loads_as_the_same_state() -> None:
    state = CustomerState(
        customer_id="c1",
        stage=Stage.RETENTION,
        signal_counts={"orders": 2},
        signal_times={"orders": [T0, T0.replace(day=3)]},
        signal_revenue={"orders": 110.5},
        traits={"plan": "pro", "seats": 3, "tags": ["a", None]},
        last_activity_at=T0,
        first_seen_at=T0,
        sequence=4,
        origin="m-1",
    )
    as_json = msgspec.json.encode(state)  # what a jsonb row turns into under migration 0006
    assert load_state(as_json) == load_state(dump_state(state)) == state
    assert len(dump_state(state)) < len(as_json)


def test_a_trait_too_big_for_messagepack_keeps_the_state_in_json() -> None:
    state = CustomerState(customer_id="c1", traits={"big": 2**70})
    stored = dump_state(state)
    assert orjson.loads(stored)["traits"] == {"big": 2**70}
    assert load_state(stored) == state


@pytest.mark.parametrize("stored", [b"\xc1", b"{not json", msgspec.msgpack.encode([1, 2])])
def test_bytes_that_are_no_state_are_refused_with_a_clear_error(stored: bytes) -> None:
    with pytest.raises(StoredStateError, match="stored customer state"):
        load_state(stored)


def test_a_row_written_before_versions_existed_still_loads() -> None:
    legacy = orjson.dumps({"customer_id": "c1", "stage": "engagement", "health": "active", "sequence": 3})
    state = load_state(legacy)
    assert (state.customer_id, state.stage, state.sequence, state.version) == ("c1", Stage.ENGAGEMENT, 3, STATE_VERSION)


def test_every_older_version_has_an_upgrade_step() -> None:
    assert set(UPGRADES) == set(range(STATE_VERSION))


def test_upgrade_steps_run_in_order_from_the_stored_version() -> None:
    def rename(old: str, new: str) -> Any:
        def step(raw: dict[str, Any]) -> dict[str, Any]:
            raw[new] = raw.pop(old)
            return raw

        return step

    steps = {0: rename("a", "b"), **{v: rename("b", "b") for v in range(1, STATE_VERSION)}}
    assert upgrade({"a": 1}, steps) == {"b": 1, "version": STATE_VERSION}
    # A row already at the current version is left as it is.
    assert upgrade({"a": 1, "version": STATE_VERSION}, steps) == {"a": 1, "version": STATE_VERSION}


@pytest.mark.parametrize("version", [STATE_VERSION + 1, "2"])
@pytest.mark.parametrize("encode", [orjson.dumps, msgspec.msgpack.encode])
def test_a_row_from_a_newer_engine_is_refused_with_a_clear_error(version: object, encode: Any) -> None:
    with pytest.raises(StoredStateError, match="newer than this engine"):
        load_state(encode({"customer_id": "c1", "version": version, "a_field_of_the_future": 1}))
