"""Emitted changes as CloudEvents for ``clm.stage-changes.v1`` and as history rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clm_shared.cloudevents import encode
from clm_shared.kafka.producer import OutgoingRecord
from clm_shared.schemas.lifecycle import LIFECYCLE_SCHEMA_VERSION, EventType
from stage_engine.batch import Emitted, Merged
from stage_engine.lifecycle import HealthMove, StageMove

SERVICE = "stage-engine"


def to_record(item: Emitted, topic: str) -> OutgoingRecord:
    kind, time, data = event_data(item)
    message = encode(
        event_id=item.event_id,
        event_type=kind,
        service=SERVICE,
        customer_id=item.customer_id,
        sequence=item.sequence,
        time=time,
        data=data,
    )
    return OutgoingRecord(topic, message.value, key=item.customer_id.encode(), headers=tuple(message.headers.items()))


def event_data(item: Emitted) -> tuple[EventType, datetime, dict[str, Any]]:
    """The event's type, time and data: the fields of ``StageChanged`` and its siblings, as plain values.

    Built directly rather than through the pydantic models (validated and dumped per event, most of the
    encoding time); a test holds each kind equal to its model's ``model_dump(mode="json")``.
    """
    change = item.change
    head = {"schema_version": LIFECYCLE_SCHEMA_VERSION, "customer_id": item.customer_id}
    if isinstance(change, StageMove):
        return (
            EventType.STAGE_CHANGED,
            change.event_time,
            head
            | {
                "from_stage": change.from_stage,
                "to_stage": change.to_stage,
                "skipped": list(change.skipped),
                "rule": change.rule,
                "message_id": change.message_id,
                "event_time": change.event_time,
            },
        )
    if isinstance(change, HealthMove):
        return (
            EventType.HEALTH_CHANGED,
            change.event_time,
            head
            | {
                "from_health": change.from_health,
                "to_health": change.to_health,
                "rule": change.rule,
                "message_id": change.message_id,
                "event_time": change.event_time,
            },
        )
    if isinstance(change, Merged):
        return (
            EventType.CUSTOMER_MERGED,
            change.event_time,
            head | {"merged_id": change.merged_id, "message_id": change.message_id, "event_time": change.event_time},
        )
    return EventType.CUSTOMER_ERASED, change.event_time, head | {"erased_at": change.event_time}


def to_history_row(item: Emitted) -> dict[str, Any]:
    change = item.change
    row: dict[str, Any] = {
        "customer_id": item.customer_id,
        "sequence": item.sequence,
        "event_id": item.event_id,
        "event_time": change.event_time,
        "message_id": change.message_id,
        "skipped": [],
    }
    if isinstance(change, StageMove):
        row |= {
            "kind": "stage",
            "from_value": change.from_stage,
            "to_value": change.to_stage,
            "skipped": [str(s) for s in change.skipped],
            "rule": change.rule,
        }
    elif isinstance(change, HealthMove):
        row |= {"kind": "health", "from_value": change.from_health, "to_value": change.to_health, "rule": change.rule}
    elif isinstance(change, Merged):
        row |= {"kind": "merge", "from_value": change.merged_id, "to_value": item.customer_id, "rule": "merged"}
    return row
