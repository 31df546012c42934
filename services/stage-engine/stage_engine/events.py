"""Emitted changes as CloudEvents for ``clm.stage-changes.v1`` and as history rows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from clm_shared.cloudevents import encode
from clm_shared.kafka.producer import OutgoingRecord
from clm_shared.schemas.lifecycle import CustomerErased, CustomerMerged, EventType, HealthChanged, StageChanged
from stage_engine.batch import Emitted, Merged
from stage_engine.lifecycle import HealthMove, StageMove

SERVICE = "stage-engine"


def to_record(item: Emitted, topic: str) -> OutgoingRecord:
    change = item.change
    data: BaseModel
    if isinstance(change, StageMove):
        kind, time = EventType.STAGE_CHANGED, change.event_time
        data = StageChanged(
            customer_id=item.customer_id,
            from_stage=change.from_stage,
            to_stage=change.to_stage,
            skipped=list(change.skipped),
            rule=change.rule,
            message_id=change.message_id,
            event_time=change.event_time,
        )
    elif isinstance(change, HealthMove):
        kind, time = EventType.HEALTH_CHANGED, change.event_time
        data = HealthChanged(
            customer_id=item.customer_id,
            from_health=change.from_health,
            to_health=change.to_health,
            rule=change.rule,
            message_id=change.message_id,
            event_time=change.event_time,
        )
    elif isinstance(change, Merged):
        kind, time = EventType.CUSTOMER_MERGED, change.event_time
        data = CustomerMerged(
            customer_id=item.customer_id,
            merged_id=change.merged_id,
            message_id=change.message_id,
            event_time=change.event_time,
        )
    else:
        kind, time = EventType.CUSTOMER_ERASED, change.event_time
        data = CustomerErased(customer_id=item.customer_id, erased_at=change.event_time)
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
