"""The engine's CloudEvents are built from plain values: byte for byte what the pydantic models give."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel

from clm_shared.cloudevents import decode, encode
from clm_shared.schemas.lifecycle import (
    CustomerErased,
    CustomerMerged,
    Health,
    HealthChanged,
    Stage,
    StageChanged,
)
from stage_engine.batch import Emitted, Erased, Merged, event_id
from stage_engine.events import HISTORY_COLUMNS, SERVICE, event_data, to_history_record, to_record
from stage_engine.lifecycle import HealthMove, StageMove

T = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
PARIS = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))

CASES: list[tuple[Emitted, BaseModel]] = [
    (
        Emitted("c1", 1, "e1", StageMove(None, Stage.DISCOVERY, (), "first_touchpoint", "m1", T)),
        StageChanged(
            customer_id="c1",
            from_stage=None,
            to_stage=Stage.DISCOVERY,
            rule="first_touchpoint",
            message_id="m1",
            event_time=T,
        ),
    ),
    (
        Emitted("c1", 2, "e2", StageMove(Stage.DISCOVERY, Stage.CONVERSION, (Stage.ENGAGEMENT,), "r", "m2", PARIS)),
        StageChanged(
            customer_id="c1",
            from_stage=Stage.DISCOVERY,
            to_stage=Stage.CONVERSION,
            skipped=[Stage.ENGAGEMENT],
            rule="r",
            message_id="m2",
            event_time=PARIS,
        ),
    ),
    (
        Emitted("c1", 3, "e3", HealthMove(Health.ACTIVE, Health.AT_RISK, "inactive", None, T)),
        HealthChanged(
            customer_id="c1",
            from_health=Health.ACTIVE,
            to_health=Health.AT_RISK,
            rule="inactive",
            message_id=None,
            event_time=T,
        ),
    ),
    (
        Emitted("c1", 4, "e4", Merged("anon-1", "m4", T)),
        CustomerMerged(customer_id="c1", merged_id="anon-1", message_id="m4", event_time=T),
    ),
    (Emitted("c1", 5, "e5", Erased(T)), CustomerErased(customer_id="c1", erased_at=T)),
]


@pytest.mark.parametrize(("item", "model"), CASES)
def test_an_event_is_what_its_pydantic_model_would_write(item: Emitted, model: BaseModel) -> None:
    kind, time, _ = event_data(item)
    through_model = encode(
        event_id=item.event_id,
        event_type=kind,
        service=SERVICE,
        customer_id=item.customer_id,
        sequence=item.sequence,
        time=time,
        data=model,
    )
    record = to_record(item, "topic")
    assert record.value == through_model.value
    assert type(model).model_validate(decode(record.value).data) == model


@pytest.mark.parametrize(
    ("customer", "origin", "sequence"), [("c1", "", 1), ("cust-42", "bench-42-0", 17), ("ü-ñ", "m", 3)]
)
def test_event_ids_are_the_uuid5_of_customer_origin_and_sequence(customer: str, origin: str, sequence: int) -> None:
    expected = uuid.uuid5(uuid.UUID("6f1c1a52-3f5e-4d36-9d0f-0c6b1d7f7a11"), f"{customer}/{origin}/{sequence}")
    assert event_id(customer, sequence, origin) == str(expected)


def test_history_records_follow_the_columns() -> None:
    record = to_history_record(CASES[1][0])
    assert dict(zip(HISTORY_COLUMNS, record, strict=True)) == {
        "customer_id": "c1",
        "sequence": 2,
        "event_id": "e2",
        "kind": "stage",
        "from_value": "discovery",
        "to_value": "conversion",
        "skipped": ["engagement"],
        "rule": "r",
        "message_id": "m2",
        "event_time": PARIS,
    }
