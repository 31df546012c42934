"""The stage engine's app factory: consumer loop, outbox relay, timers and the customer API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import FastAPI

from clm_shared.runtime import ConsumerRuntime, runtime_hooks
from clm_shared.schemas.touchpoint import TouchpointRecord
from clm_shared.serde import StructDeserializer
from clm_shared.service import ServiceContext, create_service_app
from clm_shared.settings import Settings, get_settings
from clm_shared.transactions import transaction
from stage_engine.api import router
from stage_engine.engine import Clock, StageEngine
from stage_engine.erasure import erasure_key, rekey_unkeyed_hashes
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
    key = erasure_key(settings)

    async def setup(ctx: ServiceContext, runtime: ConsumerRuntime) -> None:
        async with transaction(ctx.engine) as db:
            await rekey_unkeyed_hashes(db, key)
        engine = StageEngine(
            ctx.engine,
            rules,
            runtime.publisher,
            ctx.topics.stage_changes,
            clock,
            dedup_window=timedelta(days=settings.stage_engine_dedup_days),
        )
        app.state.engine = engine
        app.state.consumer = runtime.consume(
            group=GROUP_ID,
            topics=[ctx.topics.touchpoints],
            deserializer=StructDeserializer(TouchpointRecord, "Touchpoint"),
            handler=engine.handle,
            dlq_topic=ctx.topics.touchpoints_dlq,
            max_batch=settings.stage_engine_batch_size,
        )
        runtime.relay(engine.relay)
        runtime.task("timers", engine.run_timers(runtime.stopping, settings.stage_engine_timer_interval_s))

    on_start, on_stop = runtime_hooks(setup, client_id="clm-stage-engine")
    app = create_service_app(
        "stage-engine",
        settings,
        migrations=MIGRATIONS,
        routers=[router],
        on_start=on_start,
        on_stop=on_stop,
        title="clm stage engine (customers and lifecycle stages)",
    )
    app.state.erasure_key = key
    return app
