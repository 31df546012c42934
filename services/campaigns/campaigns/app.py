"""The campaigns service's app factory: two consumers, the timer and delivery loops, the relay, the API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import FastAPI

from campaigns import registry
from campaigns.api import router
from campaigns.consumers import (
    LIFECYCLE_GROUP,
    TOUCHPOINTS_GROUP,
    Decisions,
    lifecycle_deserializer,
    lifecycle_handler,
    touchpoint_deserializer,
    touchpoint_handler,
)
from campaigns.definitions import SHIPPED_DIR, load_folder
from campaigns.delivery import DeliveryRound, Sender, TimerRound
from campaigns.guardrails import Guardrails
from campaigns.unsubscribe import unsubscribe_router
from clm_shared.kafka.consumer import BATCHED_FETCH
from clm_shared.outbox import OutboxRelay
from clm_shared.runtime import ConsumerRuntime, runtime_hooks
from clm_shared.service import ServiceContext, create_service_app
from clm_shared.settings import Settings, get_settings
from clm_shared.transactions import transaction

MIGRATIONS = Path(__file__).parent / "migrations"

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


async def seed_campaigns(ctx: ServiceContext, now: datetime) -> None:
    """The shipped campaigns, then an operator's folder; one instance at a time (an advisory lock)."""
    shipped = load_folder(SHIPPED_DIR)
    folder = load_folder(ctx.settings.campaigns_dir) if ctx.settings.campaigns_dir else []
    async with transaction(ctx.engine) as db:
        await db.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.campaigns-seed'))")
        await registry.seed(db, shipped, origin="shipped", now=now)
        await registry.seed(db, folder, origin="folder", now=now)


def default_sender(settings: Settings) -> Sender:
    from campaigns.channels.email import EmailChannel
    from campaigns.channels.webhook import WebhookChannel
    from campaigns.sending import ChannelSender
    from campaigns.signing import signer_for

    return ChannelSender(EmailChannel(settings), WebhookChannel(settings), signer_for(settings), settings)


def create_app(
    settings: Settings | None = None, *, clock: Clock = system_clock, sender: Sender | None = None
) -> FastAPI:
    settings = settings or get_settings()
    window = timedelta(days=settings.campaigns_dedup_days)
    guardrails = Guardrails.from_settings(settings)
    tick = settings.campaigns_tick_interval_s

    async def setup(ctx: ServiceContext, runtime: ConsumerRuntime) -> None:
        await seed_campaigns(ctx, clock())
        decisions = Decisions(guardrails, clock, ctx.topics.campaign_events)
        relay = runtime.relay(OutboxRelay(ctx.engine, runtime.publisher))
        due_sends = asyncio.Event()
        runtime.consume(
            group=TOUCHPOINTS_GROUP,
            topics=[ctx.topics.touchpoints],
            deserializer=touchpoint_deserializer,
            handler=touchpoint_handler(ctx.engine, decisions, window, after_commit=due_sends.set),
            dlq_topic=ctx.topics.touchpoints_dlq,
            max_batch=1000,
            fetch=BATCHED_FETCH,
        )
        runtime.consume(
            group=LIFECYCLE_GROUP,
            topics=[ctx.topics.stage_changes],
            deserializer=lifecycle_deserializer,
            handler=lifecycle_handler(ctx.engine, decisions, window, after_commit=due_sends.set),
            dlq_topic=ctx.topics.stage_changes_dlq,
            max_batch=1000,
            fetch=BATCHED_FETCH,
        )
        runtime.every("campaign timers", tick, TimerRound(ctx.engine, decisions, wake=due_sends.set))
        delivery = DeliveryRound(
            ctx.engine,
            decisions,
            sender or default_sender(ctx.settings),
            attempts=settings.campaigns_send_attempts,
            retry_base=timedelta(seconds=settings.campaigns_retry_base_s),
            on_sent=relay.ready.set,
        )
        runtime.every("campaign delivery", tick, delivery, wake=due_sends)

    on_start, on_stop = runtime_hooks(setup, client_id="clm-campaigns")
    return create_service_app(
        "campaigns",
        settings,
        migrations=MIGRATIONS,
        routers=[router],
        open_routers=[unsubscribe_router],
        on_start=on_start,
        on_stop=on_stop,
        title="clm campaigns (lifecycle journeys, email and webhooks)",
    )
