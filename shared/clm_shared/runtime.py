"""Run a service's consumer loops and background tasks (outbox relay, timers) for its lifetime.

A service's app factory builds them in ``on_start`` and hands them to a ``ConsumerRuntime``; the
``runtime_hooks`` pair does the start and the clean stop, so the factory stays a few lines::

    async def setup(ctx: ServiceContext, runtime: ConsumerRuntime) -> None:
        runtime.consume(group="metrics", topics=[ctx.topics.stage_changes],
                        deserializer=CloudEventDeserializer(), handler=consumer,
                        dlq_topic=ctx.topics.stage_changes_dlq)
        runtime.relay(OutboxRelay(ctx.engine, runtime.publisher))

    on_start, on_stop = runtime_hooks(setup, client_id="clm-metrics")
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from clm_shared.kafka.consumer import BatchHandler, ConsumerLoop, Deserializer
from clm_shared.kafka.producer import Publisher
from clm_shared.outbox import OutboxRelay, wait_any
from clm_shared.service import ServiceContext, StartHook

log = structlog.get_logger(__name__)

T = TypeVar("T")
# One round of periodic work; True when it stopped at its batch limit (run again at once).
Round = Callable[[], Awaitable[bool]]


class ConsumerRuntime:
    """The consumer loops and background tasks of one service process."""

    def __init__(self, ctx: ServiceContext, publisher: Publisher, *, client_id: str) -> None:
        self.ctx = ctx
        self.publisher = publisher
        self.client_id = client_id
        self.stopping = asyncio.Event()
        self.loops: list[ConsumerLoop[Any]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def consume(
        self,
        *,
        group: str,
        topics: Sequence[str],
        deserializer: Deserializer[T],
        handler: BatchHandler[T],
        dlq_topic: str,
        **options: Any,
    ) -> ConsumerLoop[T]:
        """Build a consumer loop for ``group`` (namespaced like the topics) and run it from start to stop."""
        settings = self.ctx.settings
        loop: ConsumerLoop[T] = ConsumerLoop(
            bootstrap=settings.kafka_bootstrap,
            group_id=settings.topic_namespace + group,
            topics=topics,
            deserializer=deserializer,
            handler=handler,
            publisher=self.publisher,
            dlq_topic=dlq_topic,
            client_id=self.client_id,
            **options,
        )
        return self.run_loop(loop, name=group)

    def run_loop(self, loop: ConsumerLoop[T], *, name: str | None = None) -> ConsumerLoop[T]:
        """Run a loop built elsewhere; /readyz (check ``consumer:<name>``) is false until it has partitions."""
        name = name or loop.group_id

        async def assigned() -> bool:
            return loop.assigned.is_set()

        async def consume() -> None:
            await self.ctx.topics_ready.wait()
            await loop.run_forever()

        self.ctx.readiness[f"consumer:{name}"] = assigned
        self.loops.append(loop)
        self.task(f"consumer:{name}", consume())
        return loop

    def relay(self, relay: OutboxRelay) -> OutboxRelay:
        """Publish an outbox until stop (one relay per service holds the lock at a time)."""
        self.task(f"relay {relay.outbox.table}", relay.run(self.stopping))
        return relay

    def every(self, name: str, interval_s: float, work: Round, *, wake: asyncio.Event | None = None) -> None:
        """Run ``work`` every ``interval_s`` (or when ``wake`` is set) until stop; failures are retried."""

        async def repeat() -> None:
            while not self.stopping.is_set():
                if wake is not None:
                    wake.clear()  # before the round: a wake-up during it is not lost
                try:
                    more = await work()
                except Exception as exc:  # the database or broker away: try again next round
                    log.warning("background task failed; retrying", task=name, error=repr(exc))
                    more = False
                if not more:
                    await wait_any(self.stopping, wake, interval_s)

        self.task(name, repeat())

    def task(self, name: str, work: Awaitable[None]) -> None:
        async def logged() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("background task ended with an error", task=name, error=repr(exc))

        self._tasks.append(asyncio.create_task(logged(), name=name))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batches in hand, commit them, stop the tasks; then cancel what is left."""
        self.stopping.set()
        for loop in self.loops:
            loop.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in pending:  # e.g. a consumer still waiting for its topics
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()
        await self.publisher.stop()


Setup = Callable[[ServiceContext, ConsumerRuntime], Awaitable[None]]


def runtime_hooks(setup: Setup, *, client_id: str, publisher: Publisher | None = None) -> tuple[StartHook, StartHook]:
    """``on_start`` and ``on_stop`` for ``create_service_app``: a runtime per start, stopped cleanly."""
    runtimes: list[ConsumerRuntime] = []

    async def on_start(ctx: ServiceContext) -> None:
        own = publisher or Publisher(ctx.settings.kafka_bootstrap, client_id=client_id)
        runtime = ConsumerRuntime(ctx, own, client_id=client_id)
        runtimes.append(runtime)
        await setup(ctx, runtime)

    async def on_stop(ctx: ServiceContext) -> None:
        while runtimes:
            await runtimes.pop().stop()

    return on_start, on_stop
