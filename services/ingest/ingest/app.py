"""The ingest service's app factory: wires the write-key cache and the producer to the tracking API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from clm_shared.kafka.producer import Publisher
from clm_shared.service import ServiceContext, create_service_app
from clm_shared.settings import Settings, get_settings
from ingest.api import TRACKING_CALLS, IngestRuntime, install_tracking_api
from ingest.auth import WriteKeys
from ingest.keys import active_key_hashes
from ingest.publishing import TouchpointPublisher

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; without settings (as uvicorn's worker factory) they come from the environment."""
    settings = settings or get_settings()
    publisher = Publisher(
        settings.kafka_bootstrap,
        client_id="clm-ingest",
        timeout_s=settings.ingest_publish_timeout_s,
    )

    async def on_start(ctx: ServiceContext) -> None:
        app.state.ingest = IngestRuntime(
            keys=WriteKeys(lambda: active_key_hashes(ctx.engine), what="write keys"),
            touchpoints=TouchpointPublisher(publisher, ctx.topics.touchpoints),
            retry_after_s=max(1, round(settings.ingest_publish_timeout_s)),
        )

    async def on_stop(ctx: ServiceContext) -> None:
        await publisher.stop()

    app = create_service_app(
        "ingest",
        settings,
        migrations=MIGRATIONS,
        on_start=on_start,
        on_stop=on_stop,
        title="clm ingest (Segment-compatible tracking API)",
        direct_posts=TRACKING_CALLS,
    )
    install_tracking_api(app)
    return app
