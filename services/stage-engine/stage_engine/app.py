"""The stage engine's app factory: consumer loop, outbox relay, timers and the customer API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import FastAPI

from clm_shared.kafka.consumer import ConsumerLoop
from clm_shared.kafka.producer import Publisher
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonDeserializer
from clm_shared.service import ServiceContext, create_service_app
from clm_shared.settings import Settings, get_settings
from stage_engine.api import router
from stage_engine.engine import Clock, StageEngine
from stage_engine.rules import RulesError, load_rules

MIGRATIONS = Path(__file__).parent / "migrations"
GROUP_ID = "stage-engine"


def system_clock() -> datetime:
    return datetime.now(UTC)


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or get_settings()
    try:
        rules = load_rules(settings.rules_file)
    except RulesError as exc:
        raise SystemExit(str(exc)) from None
    publisher = Publisher(settings.kafka_bootstrap, client_id="clm-stage-engine")
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def on_start(ctx: ServiceContext) -> None:
        engine = StageEngine(
            ctx.engine,
            rules,
            publisher,
            ctx.topics.stage_changes,
            clock,
            dedup_window=timedelta(days=settings.stage_engine_dedup_days),
        )
        loop = ConsumerLoop(
            bootstrap=settings.kafka_bootstrap,
            group_id=settings.topic_namespace + GROUP_ID,
            topics=[ctx.topics.touchpoints],
            deserializer=JsonDeserializer(Touchpoint),
            handler=engine.handle,
            publisher=publisher,
            dlq_topic=ctx.topics.touchpoints_dlq,
            client_id="clm-stage-engine",
            max_batch=settings.stage_engine_batch_size,
        )
        app.state.engine = engine
        app.state.consumer = loop
        stop.clear()

        async def consume() -> None:
            await ctx.topics_ready.wait()
            await loop.run_forever()

        tasks.extend(
            [
                asyncio.create_task(consume()),
                asyncio.create_task(engine.run_relay(stop)),
                asyncio.create_task(engine.run_timers(stop, settings.stage_engine_timer_interval_s)),
            ]
        )

    async def on_stop(ctx: ServiceContext) -> None:
        stop.set()
        app.state.consumer.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        await publisher.stop()

    app = create_service_app(
        "stage-engine",
        settings,
        migrations=MIGRATIONS,
        routers=[router],
        on_start=on_start,
        on_stop=on_stop,
        title="clm stage engine (customers and lifecycle stages)",
    )
    return app
