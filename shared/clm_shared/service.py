"""What every service has: settings, a database engine, migrations, topics and the ops endpoints."""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clm_shared.access.cache import SecretHashes
from clm_shared.access.dependency import Access, require_token
from clm_shared.access.tokens import access_engine, active_token_hashes, admin_token_of, migrate_access
from clm_shared.body_limits import BodyLimits
from clm_shared.db import create_engine, database_reachable, service_schema
from clm_shared.kafka.admin import broker_reachable, ensure_topics
from clm_shared.logs import configure_logging
from clm_shared.migrations import apply_migrations
from clm_shared.settings import Settings, load_settings_or_exit
from clm_shared.topics import Topics

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]
StartHook = Callable[["ServiceContext"], Awaitable[None]]


@dataclass
class ServiceContext:
    """The connections one service process holds; handed to its start and stop hooks."""

    name: str
    settings: Settings
    engine: AsyncEngine
    topics: Topics
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)
    topics_ready: asyncio.Event = field(default_factory=asyncio.Event)


async def _wait_for_database(engine: AsyncEngine, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await database_reachable(engine):
        if time.monotonic() > deadline:
            raise SystemExit(f"PostgreSQL did not answer within {timeout_s:.0f}s: check CLM_DATABASE_URL")
        await asyncio.sleep(0.5)


async def _ensure_topics_forever(ctx: ServiceContext) -> None:
    """Topics are created in the background so a service starts (not ready) while Kafka is down."""
    settings = ctx.settings
    partitions = {topic: settings.kafka_partitions for topic in ctx.topics.all()}
    while True:
        try:
            await ensure_topics(
                settings.kafka_bootstrap, partitions, replication_factor=settings.kafka_replication_factor
            )
            ctx.topics_ready.set()
            return
        except Exception as exc:  # keep trying: readiness reports the broker as down meanwhile
            log.warning("kafka topics not ensured yet", error=repr(exc))
            await asyncio.sleep(2.0)


def create_service_app(
    name: str,
    settings: Settings,
    *,
    migrations: Path,
    routers: Sequence[APIRouter] = (),
    open_routers: Sequence[APIRouter] = (),
    on_start: StartHook | None = None,
    on_stop: StartHook | None = None,
    title: str | None = None,
    direct_posts: Mapping[str, ASGIApp] | None = None,
) -> FastAPI:
    """A FastAPI app with the service's lifespan (database, migrations, topics) and ops endpoints.

    Every route of ``routers`` requires an API token (``require_token``); only the ops endpoints,
    the OpenAPI description, ``open_routers`` (routers that serve no data and need no token, such as
    a dashboard's page and static files) and routes a service mounts itself (ingest's tracking API)
    are open. ``direct_posts`` maps paths to ASGI apps that answer POSTs to them ahead of routing
    and the framework's middleware (inside the body limits): for a hot path that does its own work.
    """
    configure_logging(settings.log_level, settings.log_format, service=name)  # again in each worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, schema=service_schema(settings, name))
        ctx = ServiceContext(name=name, settings=settings, engine=engine, topics=Topics(settings.topic_namespace))
        ctx.readiness["postgres"] = lambda: database_reachable(engine)
        ctx.readiness["kafka"] = lambda: broker_reachable(settings.kafka_bootstrap)
        app.state.ctx = ctx
        await _wait_for_database(engine, timeout_s=30)
        await apply_migrations(engine, script_location=migrations, schema=service_schema(settings, name))
        await migrate_access(engine, settings)
        tokens = access_engine(engine, settings)
        app.state.access = Access(
            SecretHashes(lambda: active_token_hashes(tokens), what="API tokens"), admin_token_of(settings)
        )
        topics_task = asyncio.create_task(_ensure_topics_forever(ctx))
        if on_start:
            await on_start(ctx)
        # Start-up objects live for the whole process: keeping them out of the collector's reach
        # removes the long gen-2 pauses that showed up as tail latency under load.
        gc.collect()
        gc.freeze()
        # A consumer's batch allocates tens of thousands of short-lived objects: at the default
        # threshold (700) the young generation was scanned every few hundred of them, a fifth of the
        # stage engine's pure CPU per touchpoint; at 10,000 most die before a scan (a sixth less CPU).
        gc.set_threshold(10_000, 10, 10)
        log.info(
            "service started",
            service=name,
            port=settings.port_of(name),
            admin_token="set" if app.state.access.admin_token else "none",
        )
        try:
            yield
        finally:
            if on_stop:
                await on_stop(ctx)
            topics_task.cancel()
            await engine.dispose()

    app = FastAPI(title=title or f"clm {name}", lifespan=lifespan)
    # Outermost, around Starlette's own error layer, so a body too big or too slow is a 413 or 408, never a 500.
    build_stack = app.build_middleware_stack

    def build_stack_with_limits() -> ASGIApp:
        stack = build_stack()
        if direct_posts:
            stack = DirectPosts(stack, direct_posts)
        return BodyLimits(stack, timeout_s=settings.http_body_timeout_s, max_bytes=settings.http_max_body_bytes)

    app.build_middleware_stack = build_stack_with_limits  # type: ignore[method-assign]
    app.include_router(ops_router(name))
    for router in routers:
        app.include_router(router, dependencies=[Depends(require_token)])
    for router in open_routers:
        app.include_router(router)
    return app


class DirectPosts:
    """POSTs to a few exact paths go to their own ASGI app, skipping Starlette's routing and middleware.

    An exception the app lets out is answered as Starlette's error layer would (a plain 500, unless
    an answer was started) and raised on for the server to log.
    """

    def __init__(self, app: ASGIApp, posts: Mapping[str, ASGIApp]) -> None:
        self.app = app
        self.posts = dict(posts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self.posts.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if direct is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await direct(scope, receive, tracked_send)
        except Exception:
            if not started:
                await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
            raise


def ops_router(name: str) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up (liveness)."""
        return {"status": "ok", "service": name}

    @router.get("/readyz")
    async def readyz(request: Request, response: Response) -> dict[str, object]:
        """Every dependency answers (readiness): Kafka, PostgreSQL and the service's own checks."""
        ctx: ServiceContext = request.app.state.ctx
        names = list(ctx.readiness)
        results = await asyncio.gather(*(ctx.readiness[n]() for n in names))
        checks = dict(zip(names, results, strict=True))
        checks["topics"] = ctx.topics_ready.is_set()
        ready = all(checks.values())
        response.status_code = 200 if ready else 503
        return {"status": "ready" if ready else "not ready", "service": name, "checks": checks}

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus exposition of this service's metrics (all its worker processes)."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def run_service(name: str, app_factory: Callable[[Settings], FastAPI], *, workers: int = 1) -> None:
    """Entrypoint of a service process: settings, logging, then uvicorn on the service's port.

    With several workers, uvicorn starts each from ``app_factory``'s import path, and Prometheus
    runs in multiprocess mode so ``/metrics`` adds up every worker.
    """
    settings = load_settings_or_exit()
    configure_logging(settings.log_level, settings.log_format, service=name)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port_of(name),
        "log_config": None,
        "access_log": False,
        "loop": "uvloop",
        "http": "httptools",
    }
    if workers <= 1:
        uvicorn.run(app_factory(settings), **options)
        return
    with tempfile.TemporaryDirectory(prefix=f"clm-{name}-prometheus-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run(f"{app_factory.__module__}:{app_factory.__name__}", factory=True, workers=workers, **options)
