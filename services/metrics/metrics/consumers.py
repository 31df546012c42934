"""The metrics service's two handlers and deserializers, used by the live loops and by the rebuild alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.batch_consumer import TransactionalHandler, cloudevent_handler
from clm_shared.cloudevents import CloudEventDeserializer, Envelope
from clm_shared.dedup import Dedup
from clm_shared.kafka.consumer import Consumed
from clm_shared.schemas.lifecycle import CAMPAIGN_EVENT_TYPES
from clm_shared.schemas.touchpoint import AnyTouchpoint, TouchpointRecord
from clm_shared.serde import StructDeserializer
from clm_shared.transactions import Db
from metrics.store import apply_lifecycle, apply_touchpoints
from metrics.tables import EVENT_DEDUP, TOUCHPOINT_DEDUP

# Two groups: touchpoints, and the CloudEvents of stage changes and campaigns (each with its DLQ).
TOUCHPOINTS_GROUP = "metrics"
LIFECYCLE_GROUP = "metrics-lifecycle"

Clock = Callable[[], datetime]

# msgspec, as the stage engine decodes them: pydantic's validation was most of the decoding time.
touchpoint_deserializer = StructDeserializer(TouchpointRecord, "Touchpoint")
lifecycle_deserializer = CloudEventDeserializer().with_types(*CAMPAIGN_EVENT_TYPES)


async def _touchpoints(db: Db, batch: Sequence[Consumed[AnyTouchpoint]]) -> None:
    await apply_touchpoints(db, [item.value for item in batch])


async def _lifecycle(db: Db, batch: Sequence[Consumed[Envelope]]) -> None:
    await apply_lifecycle(db, [item.value for item in batch])


def touchpoint_handler(
    engine: AsyncEngine, clock: Clock, dedup_window: timedelta
) -> TransactionalHandler[AnyTouchpoint]:
    return TransactionalHandler(
        engine,
        _touchpoints,
        id_of=lambda tp: tp.message_id,
        clock=clock,
        dedup_window=dedup_window,
        dedup=Dedup(TOUCHPOINT_DEDUP),
    )


def lifecycle_handler(engine: AsyncEngine, clock: Clock, dedup_window: timedelta) -> TransactionalHandler[Envelope]:
    return cloudevent_handler(engine, _lifecycle, clock=clock, dedup_window=dedup_window, dedup=Dedup(EVENT_DEDUP))
