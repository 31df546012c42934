"""The metrics service's app factory: two consumer loops, the gauges, and the metrics API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import Gauge

from clm_shared.batch_consumer import TransactionalHandler, cloudevent_handler
from clm_shared.cloudevents import CloudEventDeserializer
from clm_shared.dedup import Dedup
from clm_shared.kafka.consumer import Consumed
from clm_shared.runtime import ConsumerRuntime, runtime_hooks
from clm_shared.schemas.lifecycle import CAMPAIGN_EVENT_TYPES
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonDeserializer
from clm_shared.service import ServiceContext, create_service_app
from clm_shared.settings import Settings, get_settings
from clm_shared.transactions import Db, transaction
from metrics import queries
from metrics.api import router
from metrics.store import apply_lifecycle, apply_touchpoints
from metrics.tables import EVENT_DEDUP, TOUCHPOINT_DEDUP

MIGRATIONS = Path(__file__).parent / "migrations"
# Two groups: touchpoints, and the CloudEvents of stage changes and campaigns (each with its DLQ).
TOUCHPOINTS_GROUP = "metrics"
LIFECYCLE_GROUP = "metrics-lifecycle"

Clock = Callable[[], datetime]

CUSTOMERS_BY_STAGE = Gauge("clm_metrics_customers_by_stage", "Customers per current lifecycle stage.", ["stage"])
CUSTOMERS_BY_HEALTH = Gauge("clm_metrics_customers_by_health", "Customers per current health.", ["health"])


def system_clock() -> datetime:
    return datetime.now(UTC)


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or get_settings()
    window = timedelta(days=settings.metrics_dedup_days)

    async def setup(ctx: ServiceContext, runtime: ConsumerRuntime) -> None:
        async def apply_batch(db: Db, batch: Sequence[Consumed[Touchpoint]]) -> None:
            await apply_touchpoints(db, [item.value for item in batch])

        touchpoints: TransactionalHandler[Touchpoint] = TransactionalHandler(
            ctx.engine,
            apply_batch,
            id_of=lambda tp: tp.message_id,
            clock=clock,
            dedup_window=window,
            dedup=Dedup(TOUCHPOINT_DEDUP),
        )
        lifecycle = cloudevent_handler(
            ctx.engine,
            lambda db, batch: apply_lifecycle(db, [item.value for item in batch]),
            clock=clock,
            dedup_window=window,
            dedup=Dedup(EVENT_DEDUP),
        )
        runtime.consume(
            group=TOUCHPOINTS_GROUP,
            topics=[ctx.topics.touchpoints],
            deserializer=JsonDeserializer(Touchpoint),
            handler=touchpoints,
            dlq_topic=ctx.topics.touchpoints_dlq,
            max_batch=2000,
        )
        runtime.consume(
            group=LIFECYCLE_GROUP,
            topics=[ctx.topics.stage_changes, ctx.topics.campaign_events],
            deserializer=CloudEventDeserializer().with_types(*CAMPAIGN_EVENT_TYPES),
            handler=lifecycle,
            dlq_topic=ctx.topics.stage_changes_dlq,
            max_batch=2000,
        )

        async def update_gauges() -> bool:
            async with transaction(ctx.engine) as db:
                stages, health = await queries.current_stage_and_health(db)
            for stage, count in stages.items():
                CUSTOMERS_BY_STAGE.labels(stage).set(count)
            for state, count in health.items():
                CUSTOMERS_BY_HEALTH.labels(state).set(count)
            return False

        runtime.every("customer gauges", 15.0, update_gauges)

    on_start, on_stop = runtime_hooks(setup, client_id="clm-metrics")
    return create_service_app(
        "metrics",
        settings,
        migrations=MIGRATIONS,
        routers=[router],
        on_start=on_start,
        on_stop=on_stop,
        title="clm metrics (lifecycle metrics API and dashboard)",
    )
