"""End-to-end benchmark: the broker, PostgreSQL and the four services together on this machine.

Starts its own Kafka and PostgreSQL (scratch folders, free ports), migrates every service, starts
ingest, the stage engine, metrics and campaigns (with the local mail sink) as `clm up` does, then:

1. **Sustained throughput.** wrk (a separate C process) posts 100-event `/v1/batch` requests for
   BENCH_SECONDS with BENCH_CONNECTIONS connections: each request carries the next step of the
   shop journey below for 100 different customers, so every customer climbs through the stages.
   The figure is the events ingest acknowledged over the time until the stage engine, metrics
   (both its consumer groups) and campaigns had processed every one of them and every stage
   change they caused (the groups' committed offsets against the topics' end offsets).
2. **Latency.** New customers' first touchpoints at BENCH_RATE events/s for BENCH_LATENCY_SECONDS
   (``bench.latency``: the load from a process of its own), timed per event from ingest's 200 to
   its `discovery` change on the stage-changes topic, with metrics and campaigns consuming too:
   once before the load (the platform in its steady state) and once after it (the aftermath of
   the burst: autovacuum, the campaigns' retry rounds for the backlog).

The CPU share of every kind of process is printed for every phase. Results go to bench/results/.
Run by `make bench` (`python -m bench.e2e.run`). The engine and metrics run 2 processes each
(BENCH_ENGINE_WORKERS, BENCH_METRICS_WORKERS), the rest one.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from sqlalchemy import text

from bench.harness import (
    CpuShares,
    end_offsets,
    ingest_key,
    scratch_infra,
    wait_consumed,
    wait_group_stable,
    wait_ready,
    write_results,
)
from bench.ingest.run import ensure_tools
from bench.latency import latency_run, print_latency
from campaigns.consumers import LIFECYCLE_GROUP as CAMPAIGNS_LIFECYCLE
from campaigns.consumers import TOUCHPOINTS_GROUP as CAMPAIGNS_TOUCHPOINTS
from clm_cli.infra.process import free_port
from clm_cli.stack import MAIL_SINK_MODULE, SERVICES, migrate_all
from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import ensure_topics
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from metrics.consumers import LIFECYCLE_GROUP as METRICS_LIFECYCLE
from metrics.consumers import TOUCHPOINTS_GROUP as METRICS_TOUCHPOINTS
from stage_engine.app import GROUP_ID as ENGINE_GROUP
from stage_engine.repository import OUTBOX

SECONDS = int(os.environ.get("BENCH_SECONDS", "60"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "8"))
RATE = int(os.environ.get("BENCH_RATE", "2000"))
LATENCY_SECONDS = int(os.environ.get("BENCH_LATENCY_SECONDS", "30"))
ENGINE_WORKERS = int(os.environ.get("BENCH_ENGINE_WORKERS", "2"))
METRICS_WORKERS = int(os.environ.get("BENCH_METRICS_WORKERS", "2"))
INGEST_WORKERS = int(os.environ.get("BENCH_INGEST_WORKERS", "1"))
# Instances of metrics and of campaigns (each one process on a port of its own, in the same groups).
SUBSCRIBER_INSTANCES = int(os.environ.get("BENCH_SUBSCRIBER_INSTANCES", "1"))
CUSTOMERS_PER_THREAD = 20_000
PARTITIONS = 6
SERVICE_MODULES = list(SERVICES.values())

# The journey each customer walks, one step per request that reaches them (Lua table literal for wrk).
JOURNEY = [
    ("page", "Home", "{}"),
    ("track", "Product Viewed", '{"product_id":"p-1","price":19.99}'),
    ("track", "Signed Up", "{}"),
    ("track", "Product Added", '{"product_id":"p-1"}'),
    ("track", "Order Completed", '{"order_id":"o-%d-%d-1","revenue":40.0,"currency":"EUR"}'),
    ("track", "Email Opened", "{}"),
    ("track", "Order Completed", '{"order_id":"o-%d-%d-2","revenue":70.0,"currency":"EUR"}'),
    ("track", "NPS Survey Answered", '{"score":9}'),
    ("track", "Order Completed", '{"order_id":"o-%d-%d-3","revenue":90.0,"currency":"EUR"}'),
    ("track", "Referral Sent", "{}"),
]


def lua_script(path: Path, key: str) -> Path:
    """wrk's request generator: 100 events per request, each for another customer, in journey order."""
    auth = base64.b64encode(f"{key}:".encode()).decode()
    steps = ",\n".join(f'  {{"{kind}", "{name}", {lua_string(props)}}}' for kind, name, props in JOURNEY)
    path.write_text(
        f"""
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local journey = {{
{steps}
}}
local headers = {{["Content-Type"] = "application/json", ["Authorization"] = "Basic {auth}"}}
local counter = 0
function request()
  local parts = {{}}
  for i = 0, 99 do
    local g = counter * 100 + i
    local customer = g % {CUSTOMERS_PER_THREAD}
    local step = journey[math.floor(g / {CUSTOMERS_PER_THREAD}) % {len(JOURNEY)} + 1]
    local props = string.format(step[3], tid, customer)
    local name_field = step[1] == "page" and "name" or "event"
    parts[#parts + 1] = string.format(
      '{{"type":"%s","userId":"e2e-%d-%d","%s":"%s","properties":%s}}',
      step[1], tid, customer, name_field, step[2], props)
  end
  counter = counter + 1
  return wrk.format("POST", "/v1/batch", headers, '{{"batch":[' .. table.concat(parts, ",") .. ']}}')
end
"""
    )
    return path


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(url: str, script: Path) -> dict[str, Any]:
    """Posts for SECONDS; returns the requests answered 2xx and wrk's latency percentiles."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", "-s", str(script), url + "/v1/batch"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, flags=re.MULTILINE))
    return {
        "requests": total,
        "failed_requests": int(failed.group(1)) if failed else 0,
        "socket_errors": errors.group(0) if errors else "",
        "request_p50": percentiles.get("50", "?"),
        "request_p99": percentiles.get("99", "?"),
    }


async def stage_changes_settled(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    """The stage-changes topic's end offsets once the engine's outbox is empty (all changes published)."""
    engine = create_engine(settings.database_url, schema=service_schema(settings, "stage-engine"), pool_size=1)
    try:
        while True:
            async with engine.connect() as conn:
                pending = await conn.scalar(text(f"SELECT count(*) FROM {OUTBOX.table}"))
            if pending == 0:
                return await end_offsets(settings.kafka_bootstrap, [topic])
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


def main() -> None:
    ensure_tools()
    with scratch_infra("e2e") as infra:
        kafka, postgres = infra.kafka, infra.postgres
        topics = Topics()
        asyncio.run(ensure_topics(kafka.bootstrap, {name: PARTITIONS for name in topics.all()}))
        ports = {name: free_port() for name in SERVICES}
        env = {
            **os.environ,
            "CLM_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "CLM_DATABASE_URL": postgres.url,
            "CLM_DATA_DIR": str(infra.scratch / "data"),
            "CLM_LOG_LEVEL": "WARNING",
            "CLM_KAFKA_PARTITIONS": str(PARTITIONS),
            "CLM_STAGE_ENGINE_WORKERS": str(ENGINE_WORKERS),
            "CLM_METRICS_WORKERS": str(METRICS_WORKERS),
            "CLM_INGEST_WORKERS": str(INGEST_WORKERS),
            "CLM_SMTP_PORT": str(free_port()),
            **{f"CLM_{name.upper().replace('-', '_')}_PORT": str(port) for name, port in ports.items()},
        }
        settings = Settings(kafka_bootstrap=kafka.bootstrap, database_url=postgres.url)
        asyncio.run(migrate_all(settings))
        key = asyncio.run(ingest_key(postgres.url))
        log = (infra.scratch / "services.log").open("wb")
        processes = [
            subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=log)
            for module in [*SERVICE_MODULES, MAIL_SINK_MODULE]
        ]
        for name in ("metrics", "campaigns"):
            for _ in range(SUBSCRIBER_INSTANCES - 1):
                extra = env | {f"CLM_{name.upper()}_PORT": str(free_port())}
                processes.append(
                    subprocess.Popen([sys.executable, "-m", SERVICES[name]], env=extra, stdout=log, stderr=log)
                )
        try:
            for port in ports.values():
                wait_ready(f"http://127.0.0.1:{port}")
            asyncio.run(wait_group_stable(kafka.bootstrap, ENGINE_GROUP, ENGINE_WORKERS))
            asyncio.run(wait_group_stable(kafka.bootstrap, METRICS_TOUCHPOINTS, METRICS_WORKERS * SUBSCRIBER_INSTANCES))
            ingest = f"http://127.0.0.1:{ports['ingest']}"
            script = lua_script(infra.scratch / "journey.lua", key)
            # Steady state first: the platform at 2,000 events/s with nothing else to do, as it runs
            # day to day. The same run after the load shows the aftermath of a million-event burst.
            print(f"latency at {RATE:,} events/s for {LATENCY_SECONDS} s, steady...", flush=True)
            with CpuShares(SERVICE_MODULES, infra.scratch) as steady_cpu:
                steady = asyncio.run(
                    latency_run(ingest, key, kafka.bootstrap, topics.stage_changes, RATE, LATENCY_SECONDS)
                )
            print(f"load: wrk, {CONNECTIONS} connections, 100-event batches, {SECONDS} s...", flush=True)
            with CpuShares(SERVICE_MODULES, infra.scratch) as load_cpu:
                began = time.monotonic()
                load = run_wrk(ingest, script)
                load_s = time.monotonic() - began
            print("draining: until the engine, metrics and campaigns have processed everything...", flush=True)
            with CpuShares(SERVICE_MODULES, infra.scratch) as drain_cpu:
                touchpoint_ends = asyncio.run(end_offsets(kafka.bootstrap, [topics.touchpoints]))
                asyncio.run(wait_consumed(kafka.bootstrap, {ENGINE_GROUP: [topics.touchpoints]}, touchpoint_ends, 3600))
                engine_s = time.monotonic() - began
                change_ends = asyncio.run(stage_changes_settled(settings, topics.stage_changes))
                settled_s = time.monotonic() - began
                # Every subscriber group at once: when each one was done says which one holds the rest up.
                subscribers = asyncio.run(
                    wait_consumed(
                        kafka.bootstrap,
                        {
                            METRICS_TOUCHPOINTS: [topics.touchpoints],
                            METRICS_LIFECYCLE: [topics.stage_changes],
                            CAMPAIGNS_TOUCHPOINTS: [topics.touchpoints],
                            CAMPAIGNS_LIFECYCLE: [topics.stage_changes],
                        },
                        touchpoint_ends | change_ends,
                        3600,
                    )
                )
                groups_s = {ENGINE_GROUP: engine_s} | {g: settled_s + s for g, s in subscribers.items()}
                metrics_s = max(groups_s[METRICS_TOUCHPOINTS], groups_s[METRICS_LIFECYCLE])
                all_s = max(groups_s.values())
            acked = (load["requests"] - load["failed_requests"]) * 100
            on_topic = sum(touchpoint_ends.values())
            changes = sum(change_ends.values())
            print(f"latency at {RATE:,} events/s for {LATENCY_SECONDS} s, after the load...", flush=True)
            with CpuShares(SERVICE_MODULES, infra.scratch) as latency_cpu:
                latency = asyncio.run(
                    latency_run(ingest, key, kafka.bootstrap, topics.stage_changes, RATE, LATENCY_SECONDS)
                )
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
    sustained = acked / max(engine_s, metrics_s)
    summary: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "partitions": PARTITIONS,
        "engine_workers": ENGINE_WORKERS,
        "metrics_workers": METRICS_WORKERS,
        "ingest_workers": INGEST_WORKERS,
        "subscriber_instances": SUBSCRIBER_INSTANCES,
        "connections": CONNECTIONS,
        "load_s": load_s,
        "acked_events": acked,
        "touchpoints_on_topic": on_topic,
        "stage_changes": changes,
        "ingest_events_per_s": acked / load_s,
        "engine_done_s": engine_s,
        "metrics_done_s": metrics_s,
        "campaigns_done_s": all_s,
        "groups_done_s": groups_s,
        "sustained_events_per_s": sustained,
        "cpu_share_load": load_cpu.shares(),
        "cpu_share_drain": drain_cpu.shares(),
        "cpu_share_latency": latency_cpu.shares(),
        "cpu_share_steady_latency": steady_cpu.shares(),
        **load,
        **{f"latency_{k}": v for k, v in latency.items()},
        **{f"steady_latency_{k}": v for k, v in steady.items()},
    }
    print(
        f"end-to-end benchmark ({PARTITIONS} partitions, engine {ENGINE_WORKERS} process(es), ingest {INGEST_WORKERS},"
        f" metrics {METRICS_WORKERS}; metrics and campaigns {SUBSCRIBER_INSTANCES} instance(s) each)"
    )
    print(
        f"  ingest          : {acked:,} events acknowledged in {load_s:.1f} s = {acked / load_s:,.0f} events/s"
        f" (request p50 {load['request_p50']}, p99 {load['request_p99']}; {load['failed_requests']} failed)"
    )
    print(f"  on the topic    : {on_topic:,} touchpoints, {changes:,} stage and health changes")
    print(
        f"  processed       : engine {engine_s:.1f} s, metrics {metrics_s:.1f} s, campaigns {all_s:.1f} s after the"
        " load began"
    )
    print("  by group        : " + ", ".join(f"{group} {s:.1f} s" for group, s in groups_s.items()))
    print(f"  sustained       : {sustained:,.0f} events/s end to end (acknowledged, applied and measured)")
    for phase, cpu in (("steady", steady_cpu), ("load", load_cpu), ("drain", drain_cpu), ("after", latency_cpu)):
        print(
            f"  CPU ({phase:7s})   : "
            + ", ".join(f"{kind} {share:.0%}" for kind, share in cpu.shares().items())
            + " of a core"
        )
    print_latency(steady, RATE, "steady: ack->chg")
    print_latency(latency, RATE, "after load")
    write_results("e2e", summary)


if __name__ == "__main__":
    main()
