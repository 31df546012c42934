"""Emitted changes as CloudEvents for ``clm.stage-changes.v1`` and as history rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clm_shared.cloudevents import to_record as cloudevent_record
from clm_shared.kafka.producer import OutgoingRecord
from clm_shared.schemas.lifecycle import LIFECYCLE_SCHEMA_VERSION, EventType
from stage_engine.batch import Emitted, Merged
from stage_engine.lifecycle import HealthMove, StageMove

SERVICE = "stage-engine"


def to_record(item: Emitted, topic: str) -> OutgoingRecord:
    kind, time, data = event_data(item)
    return cloudevent_record(
        topic,
        event_id=item.event_id,
        event_type=kind,
        service=SERVICE,
        customer_id=item.customer_id,
        sequence=item.sequence,
        time=time,
        data=data,
    )


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


def to_history_record(item: Emitted) -> tuple[Any, ...]:
    """A history row as a tuple in ``HISTORY_COLUMNS`` order, enums as their text (for COPY)."""
    change = item.change
    skipped: list[str] = []
    if isinstance(change, StageMove):
        kind, to_value, rule = "stage", change.to_stage.value, change.rule
        from_value = change.from_stage.value if change.from_stage is not None else None
        skipped = [s.value for s in change.skipped]
    elif isinstance(change, HealthMove):
        kind, from_value, to_value, rule = "health", change.from_health.value, change.to_health.value, change.rule
    elif isinstance(change, Merged):
        kind, from_value, to_value, rule = "merge", change.merged_id, item.customer_id, "merged"
    else:
        raise ValueError("an erasure leaves no history row")
    return (
        item.customer_id,
        item.sequence,
        item.event_id,
        kind,
        from_value,
        to_value,
        skipped,
        rule,
        change.message_id,
        change.event_time,
    )


HISTORY_COLUMNS = (
    "customer_id",
    "sequence",
    "event_id",
    "kind",
    "from_value",
    "to_value",
    "skipped",
    "rule",
    "message_id",
    "event_time",
)
