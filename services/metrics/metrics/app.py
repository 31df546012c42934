"""The metrics service's app factory: two consumer loops, the gauges, and the metrics API."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import Gauge

from clm_shared.kafka.consumer import BATCHED_FETCH
from clm_shared.runtime import ConsumerRuntime, runtime_hooks
from clm_shared.service import ServiceContext, create_service_app
from clm_shared.settings import Settings, get_settings
from clm_shared.transactions import exclusive, transaction
from metrics import queries
from metrics.api import router
from metrics.clv import fit_clv
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


# Every worker sets them from the same tables: with several (CLM_METRICS_WORKERS) the newest value counts.
CUSTOMERS_BY_STAGE = Gauge(
    "clm_metrics_customers_by_stage",
    "Customers per current lifecycle stage.",
    ["stage"],
    multiprocess_mode="mostrecent",
)
CUSTOMERS_BY_HEALTH = Gauge(
    "clm_metrics_customers_by_health", "Customers per current health.", ["health"], multiprocess_mode="mostrecent"
)


def system_clock() -> datetime:
    return datetime.now(UTC)


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or get_settings()
    window = timedelta(days=settings.metrics_dedup_days)
    refit_interval = timedelta(seconds=settings.metrics_clv_refit_interval_s)

    async def setup(ctx: ServiceContext, runtime: ConsumerRuntime) -> None:
        runtime.consume(
            group=TOUCHPOINTS_GROUP,
            topics=[ctx.topics.touchpoints],
            deserializer=touchpoint_deserializer,
            handler=touchpoint_handler(ctx.engine, clock, window),
            dlq_topic=ctx.topics.touchpoints_dlq,
            max_batch=2000,
            fetch=BATCHED_FETCH,
        )
        runtime.consume(
            group=LIFECYCLE_GROUP,
            topics=[ctx.topics.stage_changes, ctx.topics.campaign_events],
            deserializer=lifecycle_deserializer,
            handler=lifecycle_handler(ctx.engine, clock, window),
            dlq_topic=ctx.topics.stage_changes_dlq,
            max_batch=2000,
            fetch=BATCHED_FETCH,
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

        async def refit_clv() -> bool:
            """Off the request path and off this process: a fit of 100,000 customers takes seconds of CPU.

            One worker or instance fits at a time, and a fit younger than half the interval (another
            one's) is not repeated.
            """
            async with exclusive(ctx.engine, "clv refit") as mine:
                if not mine:
                    return False
                now = clock()
                async with transaction(ctx.engine) as db:
                    latest = await queries.latest_clv_fit(db)
                    if latest is not None and now - latest["fitted_at"] < refit_interval / 2:
                        return False
                    orders = await queries.load_orders(db)
                fit = await asyncio.get_running_loop().run_in_executor(fitter(), partial(fit_clv, orders, now=now))
                async with transaction(ctx.engine) as db:
                    await queries.save_clv_fit(db, fit, now)
            return False

        runtime.every("clv refit", settings.metrics_clv_refit_interval_s, refit_clv)

    pools: list[ProcessPoolExecutor] = []

    def fitter() -> ProcessPoolExecutor:
        if not pools:
            pools.append(ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")))
        return pools[0]

    on_start, stop_runtime = runtime_hooks(setup, client_id="clm-metrics")

    async def on_stop(ctx: ServiceContext) -> None:
        await stop_runtime(ctx)
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        pools.clear()

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
