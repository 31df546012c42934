"""ConsumerRuntime's background rounds and clean stop, without a broker or database."""

from __future__ import annotations

import asyncio

from clm_shared.db import create_engine
from clm_shared.kafka.producer import Publisher
from clm_shared.runtime import ConsumerRuntime, runtime_hooks
from clm_shared.service import ServiceContext
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from tests.waiting import wait_for


def context() -> ServiceContext:
    settings = Settings()
    # Never connected: create_async_engine is lazy.
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none", schema="unused")
    return ServiceContext("metrics", settings, engine, Topics("t_"))


async def test_a_round_that_filled_its_batch_runs_again_at_once_and_a_wake_runs_it_early() -> None:
    runtime = ConsumerRuntime(context(), Publisher("127.0.0.1:1", client_id="unused"), client_id="test")
    rounds: list[int] = []
    wake = asyncio.Event()

    async def work() -> bool:
        rounds.append(len(rounds))
        if len(rounds) == 5:
            raise OSError("database away")  # logged; retried next round
        return len(rounds) < 4  # rounds 1-3 filled their batch: more to do

    runtime.every("work", 3600, work, wake=wake)
    await wait_for(lambda: len(rounds) == 4, what="rounds until the backlog is done")
    wake.set()
    await wait_for(lambda: len(rounds) == 5, what="the woken round (which fails)")
    wake.set()
    await wait_for(lambda: len(rounds) == 6, what="the next woken round")
    await runtime.stop(timeout_s=5)
    assert len(rounds) == 6


async def test_hooks_start_a_runtime_per_start_and_stop_its_tasks() -> None:
    started: list[ConsumerRuntime] = []
    ended = asyncio.Event()

    async def setup(ctx: ServiceContext, runtime: ConsumerRuntime) -> None:
        async def until_stopped() -> None:
            await runtime.stopping.wait()
            ended.set()

        runtime.task("waits", until_stopped())
        started.append(runtime)

    on_start, on_stop = runtime_hooks(setup, client_id="test")
    ctx = context()
    await on_start(ctx)
    assert len(started) == 1 and not ended.is_set()
    await on_stop(ctx)
    assert ended.is_set()
