"""Ack to stage change: a paced load through ingest in one process, a watcher of the stage changes in another.

Shared by the stage-engine and the end-to-end benchmarks. The two sides run in separate processes so
that neither's work can delay the other, and the sender keeps at most ``MAX_IN_FLIGHT`` requests
open: one that falls behind sends late (and counts it) instead of piling up requests that would then
slow every process on the machine and be counted as the platform's latency.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

MAX_IN_FLIGHT = 50
BATCH_EVENTS = 20


def paced_sender(base: str, key: str, rate: int, seconds: int, results: multiprocessing.Queue[Any]) -> None:
    """The load, in its own process: new customers' first touchpoints at ``rate`` events/s in 20-event batches.

    A process of its own so that the watcher's work cannot delay the sends (or the other way round), and
    at most ``MAX_IN_FLIGHT`` requests at once: a sender that falls behind sends late (and says how
    late) instead of piling up thousands of requests that then slow every process on the machine.
    Puts ``(acked, late_sends, timed_out)`` on ``results``: acknowledgement times by messageId.
    """
    asyncio.run(_send_paced(base, key, rate, seconds, results))


async def _send_paced(base: str, key: str, rate: int, seconds: int, results: multiprocessing.Queue[Any]) -> None:
    acked: dict[str, float] = {}
    failed: list[int] = []
    late = 0
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    interval = BATCH_EVENTS / rate
    run = os.urandom(4).hex()  # new customers and messages in every run, also the second in one benchmark
    async with httpx.AsyncClient(base_url=base, auth=(key, ""), timeout=10) as client:

        async def send(n: int) -> None:
            ids = [f"lat-{run}-{n}-{i}" for i in range(BATCH_EVENTS)]
            body = {
                "batch": [
                    {"type": "page", "anonymousId": f"new-{run}-{n}-{i}", "messageId": m, "name": "Home"}
                    for i, m in enumerate(ids)
                ]
            }
            try:
                answer = await client.post("/v1/batch", content=orjson.dumps(body))
            except httpx.TimeoutException:
                failed.append(n)  # a machine shared with other work: counted and reported, not fatal
                return
            finally:
                slots.release()
            if answer.status_code == 200:
                now = time.monotonic()  # system-wide: comparable with the watcher's clock in the other process
                acked.update((m, now) for m in ids)

        began = time.monotonic()
        sends = []
        for n in range(int(seconds * rate / BATCH_EVENTS)):
            delay = began + n * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                late += 1
            await slots.acquire()
            sends.append(asyncio.create_task(send(n)))
        await asyncio.gather(*sends)
    results.put((acked, late, len(failed)))


async def latency_run(base: str, key: str, bootstrap: str, topic: str, rate: int, seconds: int) -> dict[str, Any]:
    """Ack to stage change per event: the sender process paces the load, this one watches the topic."""
    seen: dict[str, float] = {}
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None)
    await consumer.start()
    await consumer.seek_to_end()
    spawn = multiprocessing.get_context("spawn")  # not fork: this process runs an event loop
    results: multiprocessing.Queue[Any] = spawn.Queue()
    sender = spawn.Process(target=paced_sender, args=(base, key, rate, seconds, results), daemon=True)
    began = time.monotonic()
    sender.start()
    outcome: tuple[dict[str, float], int, int] | None = None
    try:
        deadline = None
        while deadline is None or (time.monotonic() < deadline and len(seen) < len(outcome[0] if outcome else ())):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.monotonic()
                for record in records:
                    # Only the message id is needed: no CloudEvents parsing per event in the watcher.
                    message_id = orjson.loads(record.value)["data"].get("message_id")
                    if message_id and message_id.startswith("lat-"):
                        seen.setdefault(message_id, now)
            if outcome is None and not results.empty():
                outcome = results.get()
                deadline = time.monotonic() + 30
            elif outcome is None and not sender.is_alive() and results.empty():
                raise SystemExit(f"the load sender stopped without a result (exit code {sender.exitcode})")
    finally:
        await consumer.stop()
        sender.join(timeout=30)
    assert outcome is not None
    acked, late_sends, timed_out = outcome
    latencies = sorted(max(0.0, seen[m] - acked[m]) * 1000 for m in acked if m in seen)
    if not latencies:
        raise SystemExit("no stage change was observed")
    # p99 per 5 s of the run: tells a stall at one moment (the catch-up's aftermath) from a steady cost.
    windows: dict[int, list[float]] = {}
    for m, at in acked.items():
        if m in seen:
            windows.setdefault(int((at - began) // 5), []).append(max(0.0, seen[m] - at) * 1000)
    p99_by_window = [sorted(w)[max(0, int(len(w) * 0.99) - 1)] for _, w in sorted(windows.items())]
    return {
        "p99_ms_by_5s": p99_by_window,
        "events": len(acked),
        "timed_out_requests": timed_out,
        "late_sends": late_sends,
        "observed": len(latencies),
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "max_ms": latencies[-1],
    }


def print_latency(latency: dict[str, Any], rate: int, label: str = "ack -> change") -> None:
    """The latency run's lines, the same in every benchmark that has one."""
    print(
        f"  {label:16s}: p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms,"
        f" max {latency['max_ms']:.1f} ms at {rate:,} events/s"
        f" ({latency['observed']:,} of {latency['events']:,} observed; {latency['late_sends']} requests sent late,"
        f" {latency['timed_out_requests']} timed out)"
    )
    print("  p99 per 5 s    : " + ", ".join(f"{p99:.0f}" for p99 in latency["p99_ms_by_5s"]) + " ms")
