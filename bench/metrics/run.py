"""Metrics benchmark: consumption rate on a loaded backlog against a consume-only ceiling, then API latency.

Starts its own Kafka and PostgreSQL, writes a year of touchpoints (``bench.metrics.dataset``) to the
touchpoints topic and the lifecycle CloudEvents they lead to on the stage-changes topic, reads the
whole backlog once without a database (fetch + decode: the ceiling), then starts the metrics service
and times it until both of its consumer groups have committed every record. With the service idle,
it times sequential requests of ``/v1/metrics`` (12 metrics, 90 days, by day and by week),
``/v1/funnel`` and ``/v1/cohorts`` (a year), three runs. Prints the figures and writes them to
bench/results/. Sizes: BENCH_CUSTOMERS (100,000), BENCH_EVENTS_PER_CUSTOMER (10), BENCH_REQUESTS
(200 per endpoint and run, after 10 to warm up), BENCH_QUERY_SECONDS (40: a run stops early after
that), BENCH_RUNS (3).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import httpx

from bench.harness import consume_only, end_offsets, scratch_infra, wait_consumed, wait_ready, write_results
from bench.metrics.dataset import customer
from clm_cli.infra.process import free_port
from clm_shared.cloudevents import CloudEventDeserializer
from clm_shared.kafka.admin import ensure_topics
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.lifecycle import CAMPAIGN_EVENT_TYPES
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonDeserializer, JsonSerializer
from clm_shared.topics import Topics
from metrics.consumers import LIFECYCLE_GROUP, TOUCHPOINTS_GROUP

CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "100000"))
PER_CUSTOMER = int(os.environ.get("BENCH_EVENTS_PER_CUSTOMER", "10"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "200"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
# A run of one endpoint stops early after this many seconds, so a slow endpoint cannot hold the
# benchmark for half an hour; the figures say how many requests each run made.
BUDGET_S = float(os.environ.get("BENCH_QUERY_SECONDS", "40"))
WARM_UP = 10
PARTITIONS = 6
CHUNK = 5000
# Twelve metrics that cover every query path: the daily counters (distinct customers among them),
# NPS, trials and carts from key events, churn from health timelines, repeat purchases from orders,
# referral rate from conversions. clv_historical and retention share the orders and timeline paths.
TWELVE = (
    "page_views",
    "unique_visitors",
    "social_impressions",
    "podcast_listeners",
    "average_order_value",
    "csat",
    "nps",
    "trial_to_paid_rate",
    "cart_abandonment_rate",
    "churn_rate",
    "repeat_purchase_rate",
    "referral_rate",
)


async def write_backlog(bootstrap: str, topics: Topics, now: datetime) -> tuple[int, int, float]:
    """Touchpoints step by step within chunks of 5,000 customers (a 2,000-record batch spans ~2,000 customers)."""
    publisher = Publisher(bootstrap, client_id="bench", timeout_s=120)
    serialize = JsonSerializer()
    touchpoints = lifecycle = 0
    began = time.monotonic()
    try:
        for first in range(0, CUSTOMERS, CHUNK):
            chunk = [customer(i, PER_CUSTOMER, now) for i in range(first, min(first + CHUNK, CUSTOMERS))]
            for step in range(PER_CUSTOMER):
                records = [
                    OutgoingRecord(topics.touchpoints, serialize(tp), key=tp.customer_key.encode())
                    for tp in (c.touchpoints[step] for c in chunk if step < len(c.touchpoints))
                ]
                await publisher.publish_many(records)
                touchpoints += len(records)
            events = [
                OutgoingRecord(
                    topics.stage_changes,
                    m.value,
                    key=c.touchpoints[0].customer_key.encode(),
                    headers=list(m.headers.items()),
                )
                for c in chunk
                for m in c.lifecycle
            ]
            for start in range(0, len(events), CHUNK):
                await publisher.publish_many(events[start : start + CHUNK])
            lifecycle += len(events)
    finally:
        await publisher.stop()
    return touchpoints, lifecycle, time.monotonic() - began


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def time_requests(client: httpx.Client, path: str, params: dict[str, str]) -> dict[str, float]:
    for _ in range(WARM_UP):
        client.get(path, params=params).raise_for_status()
    times: list[float] = []
    deadline = time.monotonic() + BUDGET_S
    while len(times) < REQUESTS and time.monotonic() < deadline:
        began = time.perf_counter()
        answer = client.get(path, params=params)
        times.append((time.perf_counter() - began) * 1000)
        answer.raise_for_status()
    times.sort()
    return {"n": len(times), "p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99), "max_ms": times[-1]}


def latency_runs(base: str, token: str, now: datetime) -> dict[str, list[dict[str, float]]]:
    today = now.date()
    tomorrow = today + timedelta(days=1)
    quarter = {"names": ",".join(TWELVE), "from": str(tomorrow - timedelta(days=90)), "to": str(tomorrow)}
    endpoints = {
        "metrics_90d_day": ("/v1/metrics", {**quarter, "granularity": "day"}),
        "metrics_90d_week": ("/v1/metrics", {**quarter, "granularity": "week"}),
        "funnel": ("/v1/funnel", {"at": now.isoformat()}),
        "cohorts_year": ("/v1/cohorts", {"from": str(tomorrow - timedelta(days=365)), "to": str(tomorrow)}),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in endpoints}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for run in range(RUNS):
            for name, (path, params) in endpoints.items():
                runs[name].append(time_requests(client, path, params))
                figures = runs[name][-1]
                print(
                    f"  run {run + 1} {name:17}: p50 {figures['p50_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms"
                    f"  max {figures['max_ms']:7.1f} ms  ({figures['n']:.0f} requests)",
                    flush=True,
                )
    return runs


def breakdown(base: str, token: str, now: datetime) -> dict[str, float]:
    """Each of the twelve metrics alone (90 days by day), fastest of 3 after a warm-up: where the time goes."""
    tomorrow = now.date() + timedelta(days=1)
    window = {"from": str(tomorrow - timedelta(days=90)), "to": str(tomorrow), "granularity": "day"}
    out: dict[str, float] = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for name in TWELVE:
            params = {**window, "names": name}
            client.get("/v1/metrics", params=params).raise_for_status()
            times = []
            for _ in range(3):
                began = time.perf_counter()
                client.get("/v1/metrics", params=params).raise_for_status()
                times.append((time.perf_counter() - began) * 1000)
            out[name] = min(times)
    return out


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median over the runs of each figure, and the p99's range."""
    out = {key: statistics.median(run[key] for run in runs) for key in ("p50_ms", "p99_ms", "max_ms")}
    out["p99_min_ms"] = min(run["p99_ms"] for run in runs)
    out["p99_max_ms"] = max(run["p99_ms"] for run in runs)
    out["requests_min"] = min(run["n"] for run in runs)
    return out


def main() -> None:
    now = datetime.now(UTC)
    topics = Topics()
    token = secrets.token_urlsafe(32)
    with scratch_infra("metrics") as infra:
        kafka, postgres = infra.kafka, infra.postgres
        asyncio.run(ensure_topics(kafka.bootstrap, {name: PARTITIONS for name in topics.all()}))
        print(f"writing a year of touchpoints for {CUSTOMERS:,} customers and their lifecycle events...", flush=True)
        touchpoints, lifecycle, written_s = asyncio.run(write_backlog(kafka.bootstrap, topics, now))
        total = touchpoints + lifecycle
        print(f"  {touchpoints:,} touchpoints, {lifecycle:,} lifecycle events in {written_s:.1f} s", flush=True)
        ends = asyncio.run(end_offsets(kafka.bootstrap, [topics.touchpoints, topics.stage_changes]))
        print("consume-only ceiling (fetch + decode, no database)...", flush=True)
        decoders: dict[str, Callable[..., object]] = {
            topics.touchpoints: JsonDeserializer(Touchpoint),
            topics.stage_changes: CloudEventDeserializer().with_types(*CAMPAIGN_EVENT_TYPES),
        }
        ceiling_s = asyncio.run(consume_only(kafka.bootstrap, decoders, total))
        port = free_port()
        env = {
            **os.environ,
            "CLM_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "CLM_DATABASE_URL": postgres.url,
            "CLM_METRICS_PORT": str(port),
            "CLM_LOG_LEVEL": "WARNING",
            "CLM_KAFKA_PARTITIONS": str(PARTITIONS),
            "CLM_ADMIN_TOKEN": token,
        }
        log = (infra.scratch / "services.log").open("wb")
        service = subprocess.Popen([sys.executable, "-m", "metrics"], env=env, stdout=log, stderr=log)
        try:
            print("consuming...", flush=True)
            groups = {TOUCHPOINTS_GROUP: [topics.touchpoints], LIFECYCLE_GROUP: [topics.stage_changes]}
            consumed = asyncio.run(wait_consumed(kafka.bootstrap, groups, ends, timeout_s=3600))
            base = f"http://127.0.0.1:{port}"
            wait_ready(base)
            print(f"latency, {RUNS} runs of {REQUESTS} sequential requests per endpoint...", flush=True)
            runs = latency_runs(base, token, now)
            alone = breakdown(base, token, now)
        finally:
            service.terminate()
            service.wait(timeout=60)
    consume_s = max(consumed.values())
    rate = total / consume_s
    ceiling = total / ceiling_s
    latency = {name: summarize(figures) for name, figures in runs.items()}
    summary = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "customers": CUSTOMERS,
        "touchpoints": touchpoints,
        "lifecycle_events": lifecycle,
        "partitions": PARTITIONS,
        "backlog_write_s": written_s,
        "consume_s": consume_s,
        "consume_s_by_group": consumed,
        "consume_records_per_s": rate,
        "touchpoints_per_s": touchpoints / consumed[TOUCHPOINTS_GROUP],
        "ceiling_s": ceiling_s,
        "ceiling_records_per_s": ceiling,
        "ratio_to_ceiling": rate / ceiling,
        "latency": latency,
        "latency_runs": runs,
        "metric_alone_ms": alone,
        "metrics": list(TWELVE),
    }
    print(f"metrics benchmark ({touchpoints:,} touchpoints + {lifecycle:,} lifecycle events, {CUSTOMERS:,} customers)")
    print(
        f"  consumption     : {rate:9,.0f} records/s ({consume_s:.1f} s, start-up included;"
        f" touchpoints group {consumed[TOUCHPOINTS_GROUP]:.1f} s, lifecycle group {consumed[LIFECYCLE_GROUP]:.1f} s)"
    )
    print(
        f"  ceiling         : {ceiling:9,.0f} records/s fetch + decode ({ceiling_s:.1f} s); ratio {rate / ceiling:.0%}"
    )
    for name, figures in latency.items():
        print(
            f"  {name:16}: p50 {figures['p50_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms"
            f" ({figures['p99_min_ms']:.1f}-{figures['p99_max_ms']:.1f})  max {figures['max_ms']:7.1f} ms"
            f"  (median of {RUNS} runs, at least {figures['requests_min']:.0f} requests each)"
        )
    print(
        "  each metric alone, 90 days by day (fastest of 3): "
        + ", ".join(f"{n} {ms:.0f} ms" for n, ms in alone.items())
    )
    write_results("metrics", summary)


if __name__ == "__main__":
    main()
