"""The metrics service's app factory: two consumer loops, the gauges, and the metrics API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import Gauge

from clm_shared.runtime import ConsumerRuntime, runtime_hooks
from clm_shared.service import ServiceContext, create_service_app
from clm_shared.settings import Settings, get_settings
from clm_shared.transactions import transaction
from metrics import queries
from metrics.api import router
from metrics.consumers import (
    LIFECYCLE_GROUP,
    TOUCHPOINTS_GROUP,
    Clock,
    lifecycle_deserializer,
    lifecycle_handler,
    touchpoint_deserializer,
    touchpoint_handler,
)
from metrics.dashboard.routes import dashboard_router

MIGRATIONS = Path(__file__).parent / "migrations"


CUSTOMERS_BY_STAGE = Gauge("clm_metrics_customers_by_stage", "Customers per current lifecycle stage.", ["stage"])
CUSTOMERS_BY_HEALTH = Gauge("clm_metrics_customers_by_health", "Customers per current health.", ["health"])


def system_clock() -> datetime:
    return datetime.now(UTC)


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or get_settings()
    window = timedelta(days=settings.metrics_dedup_days)

    async def setup(ctx: ServiceContext, runtime: ConsumerRuntime) -> None:
        runtime.consume(
            group=TOUCHPOINTS_GROUP,
            topics=[ctx.topics.touchpoints],
            deserializer=touchpoint_deserializer,
            handler=touchpoint_handler(ctx.engine, clock, window),
            dlq_topic=ctx.topics.touchpoints_dlq,
            max_batch=2000,
        )
        runtime.consume(
            group=LIFECYCLE_GROUP,
            topics=[ctx.topics.stage_changes, ctx.topics.campaign_events],
            deserializer=lifecycle_deserializer,
            handler=lifecycle_handler(ctx.engine, clock, window),
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
        open_routers=[dashboard_router],
        on_start=on_start,
        on_stop=on_stop,
        title="clm metrics (lifecycle metrics API and dashboard)",
    )
