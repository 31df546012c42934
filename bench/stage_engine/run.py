"""Stage-engine benchmark: catch-up rate on a backlog, and ingest-ack to stage-change latency at a steady rate.

Starts its own Kafka and PostgreSQL, writes the backlog straight to the touchpoints topic, starts
the engine and times it until every touchpoint is applied. Then, with ingest running too, sends
first touchpoints of new customers at a fixed rate through `/v1/batch` and times, per event, from
ingest's 200 to the `discovery` change on `clm.stage-changes.v1`. Prints the figures and writes
them to bench/results/. Before the engine starts, the same run measures two ceilings on the same
backlog (``bench.stage_engine.ceilings``: consume-only and write-only) and prints the engine's ratio to
the lower one; BENCH_CEILINGS=0 skips them. Sizes: BENCH_CUSTOMERS (100,000), BENCH_EVENTS_PER_CUSTOMER
(10), BENCH_RATE (2,000 events/s), BENCH_SECONDS (20); BENCH_ENGINE_WORKERS (2) engine processes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.harness import (
    CpuShares,
    consume_only,
    end_offsets,
    ingest_key,
    scratch_infra,
    wait_consumed,
    wait_ready,
    write_results,
)
from bench.latency import latency_run, print_latency
from bench.stage_engine.ceilings import write_only
from clm_cli.infra.process import free_port
from clm_shared.categories import categorize
from clm_shared.kafka.admin import ensure_topics
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.touchpoint import Touchpoint, TouchpointRecord
from clm_shared.serde import JsonSerializer, StructDeserializer
from clm_shared.topics import Topics
from stage_engine.app import GROUP_ID

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "100000"))
PER_CUSTOMER = int(os.environ.get("BENCH_EVENTS_PER_CUSTOMER", "10"))
RATE = int(os.environ.get("BENCH_RATE", "2000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
WORKERS = int(os.environ.get("BENCH_ENGINE_WORKERS", "2"))  # one per core of the 2-core machine
CEILINGS = os.environ.get("BENCH_CEILINGS", "1") != "0"
BATCH = 2000  # the engine's default CLM_STAGE_ENGINE_BATCH_SIZE
PARTITIONS = 6
JOURNEY = [
    ("Ad Impression", {}),
    ("Product Viewed", {}),
    ("Signed Up", {}),
    ("Product Added", {}),
    ("Order Completed", {"revenue": 40.0}),
    ("Email Opened", {}),
    ("Order Completed", {"revenue": 70.0}),
    ("NPS Survey Answered", {"score": 9}),
    ("Order Completed", {"revenue": 90.0}),
    ("Referral Sent", {}),
]


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process and its live children (the engine's workers) have used so far (Linux).

    Robust to other work on a shared machine, unlike the wall-clock rate.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = (Path(f"/proc/{pid}/task") / tid / "children" for tid in os.listdir(f"/proc/{pid}/task"))
    return own + sum(cpu_seconds(int(child)) for path in children for child in path.read_text().split())


def backlog_touchpoint(customer: int, step: int, start: datetime) -> Touchpoint:
    event, props = JOURNEY[step % len(JOURNEY)]
    at = start + timedelta(hours=step * 7)
    return Touchpoint(
        message_id=f"bench-{customer}-{step}",
        type="track",
        customer_key=f"cust-{customer}",
        user_id=f"cust-{customer}",
        event=event,
        category=categorize("track", event),
        properties=props,
        timestamp=at,
        received_at=at,
    )


def _journey(customer: int, step: int) -> Touchpoint:
    return backlog_touchpoint(customer, step, datetime.now(UTC) - timedelta(days=5))


async def write_backlog(bootstrap: str, topic: str) -> float:
    publisher = Publisher(bootstrap, client_id="bench", timeout_s=60)
    serialize = JsonSerializer()
    start = datetime.now(UTC) - timedelta(days=5)
    began = time.monotonic()
    try:
        for step in range(PER_CUSTOMER):
            for first in range(0, CUSTOMERS, 5000):
                batch = [backlog_touchpoint(c, step, start) for c in range(first, min(first + 5000, CUSTOMERS))]
                await publisher.publish_many(
                    [OutgoingRecord(topic, serialize(tp), key=tp.customer_key.encode()) for tp in batch]
                )
    finally:
        await publisher.stop()
    return time.monotonic() - began


def main() -> None:
    total = CUSTOMERS * PER_CUSTOMER
    with scratch_infra("stage-engine") as infra:
        kafka, postgres = infra.kafka, infra.postgres
        topics = Topics()
        asyncio.run(ensure_topics(kafka.bootstrap, {name: PARTITIONS for name in topics.all()}))
        print(f"writing {total:,} touchpoints for {CUSTOMERS:,} customers to the topic...", flush=True)
        written_s = asyncio.run(write_backlog(kafka.bootstrap, topics.touchpoints))
        ceilings: dict[str, float] = {}
        if CEILINGS:
            print("consume-only ceiling (fetch + decode, no database)...", flush=True)
            decoders = {topics.touchpoints: StructDeserializer(TouchpointRecord, "Touchpoint")}
            ceilings["consume_only_s"] = asyncio.run(
                consume_only(kafka.bootstrap, decoders, total, max_partition_fetch_bytes=4 << 20)
            )
            print("write-only ceiling (the engine's rows through save_batch, no Kafka)...", flush=True)
            ceilings["write_only_s"] = asyncio.run(
                write_only(postgres.url, _journey, CUSTOMERS, PER_CUSTOMER, BATCH, topics.stage_changes, WORKERS)
            )
        engine_port, ingest_port = free_port(), free_port()
        env = {
            **os.environ,
            "CLM_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "CLM_DATABASE_URL": postgres.url,
            "CLM_STAGE_ENGINE_PORT": str(engine_port),
            "CLM_INGEST_PORT": str(ingest_port),
            "CLM_LOG_LEVEL": "WARNING",
            "CLM_KAFKA_PARTITIONS": str(PARTITIONS),
            "CLM_STAGE_ENGINE_WORKERS": str(WORKERS),
        }
        log = (infra.scratch / "services.log").open("wb")
        processes: list[subprocess.Popen[bytes]] = []
        try:
            ends = asyncio.run(end_offsets(kafka.bootstrap, [topics.touchpoints]))
            began = time.monotonic()
            processes.append(subprocess.Popen([sys.executable, "-m", "stage_engine"], env=env, stdout=log, stderr=log))
            print("catching up...", flush=True)
            with CpuShares(["stage_engine"], infra.scratch) as cpu:
                # Done when the group has committed every offset: nothing in the database is polled meanwhile.
                asyncio.run(wait_consumed(kafka.bootstrap, {GROUP_ID: [topics.touchpoints]}, ends, timeout_s=3600))
            catch_up_s = time.monotonic() - began
            engine_cpu_s = cpu_seconds(processes[0].pid)
            print(
                f"  catch-up: {total / catch_up_s:,.0f} events/s ({catch_up_s:.1f} s);"
                f" engine CPU {engine_cpu_s:.1f} s = {engine_cpu_s / total * 1e6:.0f} us per event",
                flush=True,
            )
            processes.append(subprocess.Popen([sys.executable, "-m", "ingest"], env=env, stdout=log, stderr=log))
            wait_ready(f"http://127.0.0.1:{ingest_port}")
            key = asyncio.run(ingest_key(postgres.url))
            print(f"latency at {RATE:,} events/s for {SECONDS}s...", flush=True)
            latency = asyncio.run(
                latency_run(
                    f"http://127.0.0.1:{ingest_port}", key, kafka.bootstrap, topics.stage_changes, RATE, SECONDS
                )
            )
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=60)
    summary = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "touchpoints": total,
        "customers": CUSTOMERS,
        "partitions": PARTITIONS,
        "engine_workers": WORKERS,
        "backlog_write_s": written_s,
        "catch_up_s": catch_up_s,
        "catch_up_events_per_s": total / catch_up_s,
        "engine_cpu_s": engine_cpu_s,
        "engine_cpu_us_per_event": engine_cpu_s / total * 1e6,
        "latency_rate_events_per_s": RATE,
        **{f"latency_{k}": v for k, v in latency.items()},
        **ceilings,
    }
    print(
        f"stage engine benchmark ({total:,} touchpoints, {CUSTOMERS:,} customers, {PARTITIONS} partitions,"
        f" {WORKERS} engine process(es))"
    )
    rate = total / catch_up_s
    print(f"  catch-up        : {rate:9,.0f} events/s ({catch_up_s:.1f} s, start-up included)")
    print(
        f"  engine CPU      : {engine_cpu_s / total * 1e6:9.0f} us per event ({engine_cpu_s:.1f} s of CPU in catch-up)"
    )
    shares = cpu.shares()
    summary["cpu_share_of_a_core"] = shares
    print("  CPU in catch-up : " + ", ".join(f"{kind} {share:.0%}" for kind, share in shares.items()) + " of a core")
    if ceilings:
        consume, write = total / ceilings["consume_only_s"], total / ceilings["write_only_s"]
        lower = min(consume, write)
        summary |= {"consume_only_events_per_s": consume, "write_only_events_per_s": write}
        summary["ratio_to_lower_ceiling"] = rate / lower
        print(f"  consume-only    : {consume:9,.0f} events/s (fetch + decode, {ceilings['consume_only_s']:.1f} s)")
        print(f"  write-only      : {write:9,.0f} events/s (save_batch, {ceilings['write_only_s']:.1f} s)")
        print(f"  ratio           : {rate / lower:.0%} of the lower ceiling")
    print_latency(latency, RATE)
    write_results("stage-engine", summary)


if __name__ == "__main__":
    main()
