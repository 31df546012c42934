"""Campaigns benchmark: trigger decisions per second on a backlog, and the delay from a wait's due time to its send.

Starts its own Kafka and PostgreSQL and writes a backlog for BENCH_CUSTOMERS customers (100,000) to
the topics: an ``identify`` touchpoint with an email for everyone, ``Checkout Started`` and
``Order Completed`` touchpoints (most orders carry the checkout's ``checkout_id``, so the cart run
exits) and the lifecycle CloudEvents the stage engine would publish (stage changes to
engagement/conversion/retention/loyalty/advocacy, health changes to at_risk/churned), all within
the last two hours so no trigger is stale. Then, BENCH_RUNS times (3): a consume-only pass over the
same backlog (fetch + decode, no database: the ceiling), and the campaigns service with the 8
shipped campaigns and a no-op sender (``python -m bench.campaigns.service``) on a fresh schema,
timed from its spawn until both consumer groups have committed every offset; then, no longer timing
decisions, until no message is pending and due (the delivery loop's rate with the no-op sender).

Then the delay of waits: the real service (``python -m campaigns``) with one more campaign from
``CLM_CAMPAIGNS_DIR`` ("Bench Wait": wait BENCH_WAIT_S, then an email), real SMTP to a
``MailSink`` in this process, and BENCH_LATENCY_CUSTOMERS (2,000) new customers triggering it
evenly over BENCH_LATENCY_SECONDS (20); per message, from the wait's due time (the touchpoint's
timestamp + the wait) to the sink receiving the mail. Prints the figures and writes them to
bench/results/.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.harness import consume_only, end_offsets, scratch_infra, wait_consumed, wait_ready, write_results
from campaigns.consumers import (
    LIFECYCLE_GROUP,
    TOUCHPOINTS_GROUP,
    lifecycle_deserializer,
    touchpoint_deserializer,
)
from campaigns.mail_sink import MailSink, stored_mail
from clm_cli.infra.process import free_port
from clm_shared.categories import categorize
from clm_shared.cloudevents import encode
from clm_shared.kafka.admin import ensure_topics
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.lifecycle import EventType, Health, HealthChanged, Stage, StageChanged
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonSerializer
from clm_shared.topics import Topics

CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "100000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
LATENCY_CUSTOMERS = int(os.environ.get("BENCH_LATENCY_CUSTOMERS", "2000"))
LATENCY_SECONDS = float(os.environ.get("BENCH_LATENCY_SECONDS", "20"))
WAIT_S = int(os.environ.get("BENCH_WAIT_S", "5"))
PARTITIONS = 6
CHUNK = 5000
GROUPS = {TOUCHPOINTS_GROUP: "touchpoints", LIFECYCLE_GROUP: "stage_changes"}
LADDER = (Stage.ENGAGEMENT, Stage.CONVERSION, Stage.RETENTION, Stage.LOYALTY, Stage.ADVOCACY)
BENCH_CAMPAIGN = f"""\
id: bench-wait
name: Bench wait
description: A wait of {WAIT_S} s, then an email (the campaigns benchmark's delay run).
trigger:
  event: Bench Wait
holdout_percent: 0
quiet_hours: false
steps:
  - type: wait
    duration: {WAIT_S}s
  - type: send
    name: after-wait
    template:
      subject: "Bench {{{{ customer.first_name | default('there', true) }}}}"
      html: "<p>Hi {{{{ customer.first_name | default('there', true) }}}}, this is the benchmark.</p>"
      text: "Hi {{{{ customer.first_name | default('there', true) }}}}, this is the benchmark."
"""


@dataclass
class Backlog:
    touchpoints: int = 0
    lifecycle: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.touchpoints + self.lifecycle


def _touchpoint(
    customer: str, n: int, at: datetime, kind: str, event: str | None, props: dict[str, Any], traits: dict[str, Any]
) -> Touchpoint:
    return Touchpoint(
        message_id=f"{customer}-{n}",
        type=kind,
        customer_key=customer,
        user_id=customer,
        event=event,
        category=categorize(kind, event),
        properties=props,
        traits=traits,
        timestamp=at,
        received_at=at,
    )


def identify(customer: str, n: int, at: datetime) -> Touchpoint:
    traits = {"email": f"{customer}@example.com", "first_name": f"Name{n}"}
    return _touchpoint(customer, 0, at, "identify", None, {}, traits)


def customer_touchpoints(index: int, now: datetime, rng: random.Random) -> list[Touchpoint]:
    """identify, then for 30% a checkout (60% of them completed by an order with its checkout_id), else 10% an order."""
    customer = f"cust-{index}"
    out = [identify(customer, index, now - timedelta(minutes=rng.uniform(100, 120)))]
    # distinct products per order: the same product on two lines of one batch fails the batch
    # (``consumers._purchases``: ON CONFLICT DO UPDATE cannot affect a row twice), see docs/benchmarks.md
    products = [
        {"product_id": f"p-{p}", "name": f"Product {p}", "quantity": rng.randint(1, 2)}
        for p in rng.sample(range(1, 301), rng.randint(1, 3))
    ]
    total = round(rng.uniform(10, 200), 2)
    if rng.random() < 0.3:
        started = now - timedelta(minutes=rng.uniform(3, 50))  # the cart's 1 h wait is not due during the run
        cart = {"checkout_id": f"co-{index}", "products": products, "total": total, "currency": "EUR"}
        out.append(_touchpoint(customer, 1, started, "track", "Checkout Started", cart, {}))
        if rng.random() < 0.6:
            order = {**cart, "order_id": f"o-{index}", "revenue": total}
            out.append(_touchpoint(customer, 2, started + timedelta(minutes=2), "track", "Order Completed", order, {}))
    elif rng.random() < 0.1:
        order = {"order_id": f"o-{index}", "products": products, "revenue": total, "currency": "EUR"}
        at = now - timedelta(minutes=rng.uniform(3, 50))
        out.append(_touchpoint(customer, 1, at, "track", "Order Completed", order, {}))
    return out


def customer_lifecycle(index: int, now: datetime, rng: random.Random) -> list[tuple[str, Any]]:
    """Stage changes up the ladder (80% engagement, half of each stage reach the next), 15% of the engaged
    at risk and 40% of those churned; CloudEvents with the customer's sequence numbers."""
    customer = f"cust-{index}"
    at = now - timedelta(minutes=rng.uniform(60, 90))
    out: list[tuple[str, Any]] = []
    stage: Stage | None = Stage.DISCOVERY

    def publish(kind: EventType, data: StageChanged | HealthChanged, name: str) -> None:
        sequence = len(out) + 1
        message = encode(
            event_id=f"ce-{customer}-{sequence}",
            event_type=kind,
            service="stage-engine",
            customer_id=customer,
            sequence=sequence,
            time=at,
            data=data,
        )
        out.append((name, message))

    for share, to in zip((0.8, 0.5, 0.5, 0.5, 0.5), LADDER, strict=True):
        if rng.random() >= share:
            break
        at += timedelta(minutes=rng.uniform(1, 10))
        data = StageChanged(
            customer_id=customer, from_stage=stage, to_stage=to, rule="bench", message_id=None, event_time=at
        )
        publish(EventType.STAGE_CHANGED, data, f"stage:{to.value}")
        stage = to
    if stage != Stage.DISCOVERY and rng.random() < 0.15:
        health: Health = Health.ACTIVE
        for to_health in (Health.AT_RISK, Health.CHURNED):
            at += timedelta(minutes=rng.uniform(1, 10))
            change = HealthChanged(
                customer_id=customer, from_health=health, to_health=to_health, rule="bench", event_time=at
            )
            publish(EventType.HEALTH_CHANGED, change, f"health:{to_health.value}")
            health = to_health
            if rng.random() >= 0.4:
                break
    return out


async def write_backlog(bootstrap: str, topics: Topics, now: datetime) -> tuple[Backlog, float]:
    """Step by step within chunks of 5,000 customers, so a batch spans thousands of customers."""
    publisher = Publisher(bootstrap, client_id="bench", timeout_s=120)
    serialize = JsonSerializer()
    backlog = Backlog()
    began = time.monotonic()
    try:
        for first in range(0, CUSTOMERS, CHUNK):
            indexes = range(first, min(first + CHUNK, CUSTOMERS))
            touchpoints = [customer_touchpoints(i, now, random.Random(i)) for i in indexes]
            for step in range(3):
                batch = [tps[step] for tps in touchpoints if step < len(tps)]
                await publisher.publish_many(
                    [OutgoingRecord(topics.touchpoints, serialize(tp), key=tp.customer_key.encode()) for tp in batch]
                )
                backlog.touchpoints += len(batch)
                backlog.kinds.update(f"touchpoint:{tp.event or tp.type}" for tp in batch)
            events = [(i, name, m) for i in indexes for name, m in customer_lifecycle(i, now, random.Random(-i - 1))]
            records = [
                OutgoingRecord(topics.stage_changes, m.value, key=f"cust-{i}".encode(), headers=list(m.headers.items()))
                for i, _, m in events
            ]
            for start in range(0, len(records), CHUNK):
                await publisher.publish_many(records[start : start + CHUNK])
            backlog.lifecycle += len(records)
            backlog.kinds.update(name for _, name, _ in events)
    finally:
        await publisher.stop()
    return backlog, time.monotonic() - began


async def set_group_offsets(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit these offsets for a group nobody is in: 0 replays the backlog, the end offsets skip it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(dict(offsets))
    finally:
        await consumer.stop()


async def reset_groups(bootstrap: str, topics: Topics, ends: dict[TopicPartition, int], *, to_end: bool) -> None:
    for group, attribute in GROUPS.items():
        topic = getattr(topics, attribute)
        await set_group_offsets(
            bootstrap, group, {tp: (end if to_end else 0) for tp, end in ends.items() if tp.topic == topic}
        )


def plain_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def rows_written(database_url: str, schema: str) -> dict[str, dict[str, int]]:
    """Runs by status, messages by status and reason, profiles and those without an email."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        out: dict[str, dict[str, int]] = {}
        for table, key in (("runs", "status"), ("messages", "status || coalesce(':' || reason, '')")):
            rows = await connection.fetch(f"SELECT {key} AS k, count(*) AS n FROM {schema}.{table} GROUP BY 1")
            out[table] = {r["k"]: r["n"] for r in sorted(rows, key=lambda r: -int(r["n"]))}
            out[table]["total"] = sum(r["n"] for r in rows)
        # every customer of the backlog was identified with an email: a profile without one lost it
        out["profiles"] = {
            "total": await connection.fetchval(f"SELECT count(*) FROM {schema}.profiles"),
            "without_email": await connection.fetchval(f"SELECT count(*) FROM {schema}.profiles WHERE email IS NULL"),
        }
        return out
    finally:
        await connection.close()


async def wait_delivered(database_url: str, schema: str, timeout_s: float) -> None:
    """Until no message is pending and due (polled once a second, after the consumers are done)."""
    connection = await asyncpg.connect(plain_url(database_url))
    began = time.monotonic()
    try:
        while await connection.fetchval(
            f"SELECT count(*) FROM {schema}.messages WHERE status = 'pending' AND due_at <= now()"
        ):
            if time.monotonic() - began > timeout_s:
                raise SystemExit(f"messages still pending after {timeout_s:.0f} s")
            await asyncio.sleep(1)
    finally:
        await connection.close()


def service_env(kafka: str, database_url: str, namespace: str, port: int, scratch: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CLM_KAFKA_BOOTSTRAP": kafka,
        "CLM_DATABASE_URL": database_url,
        "CLM_CAMPAIGNS_PORT": str(port),
        "CLM_LOG_LEVEL": "WARNING",
        "CLM_KAFKA_PARTITIONS": str(PARTITIONS),
        "CLM_SCHEMA_NAMESPACE": namespace,
        "CLM_CAMPAIGNS_QUIET_HOURS": "",
        "CLM_DATA_DIR": str(scratch),
    }


def throughput_run(
    run: int, kafka: str, database_url: str, topics: Topics, backlog: Backlog, scratch: Path
) -> dict[str, Any]:
    ends = asyncio.run(end_offsets(kafka, [topics.touchpoints, topics.stage_changes]))
    print(f"run {run}: consume-only ceiling (fetch + decode, no database)...", flush=True)
    ceiling_s = asyncio.run(
        consume_only(
            kafka,
            {topics.touchpoints: touchpoint_deserializer, topics.stage_changes: lifecycle_deserializer},
            backlog.total,
        )
    )
    asyncio.run(reset_groups(kafka, topics, ends, to_end=False))
    namespace = f"run{run}_"
    env = service_env(kafka, database_url, namespace, free_port(), scratch)
    log = (scratch / f"service-run{run}.log").open("wb")
    began = time.monotonic()
    service = subprocess.Popen([sys.executable, "-m", "bench.campaigns.service"], env=env, stdout=log, stderr=log)
    try:
        print(f"run {run}: the campaigns service on the backlog...", flush=True)
        groups = {TOUCHPOINTS_GROUP: [topics.touchpoints], LIFECYCLE_GROUP: [topics.stage_changes]}
        consumed = asyncio.run(wait_consumed(kafka, groups, ends, timeout_s=3600))
        drain_s = time.monotonic() - began
        rows = asyncio.run(rows_written(database_url, namespace + "campaigns"))
        print(f"run {run}: consumed; the delivery loop on the messages due...", flush=True)
        asyncio.run(wait_delivered(database_url, namespace + "campaigns", timeout_s=900))
        delivered_s = time.monotonic() - began
        delivered = asyncio.run(rows_written(database_url, namespace + "campaigns"))["messages"]
    finally:
        service.terminate()
        service.wait(timeout=60)
    figures: dict[str, Any] = {
        "drain_s": drain_s,
        "drain_s_by_group": consumed,
        "decisions_per_s": backlog.total / drain_s,
        "touchpoints_per_s": backlog.touchpoints / consumed[TOUCHPOINTS_GROUP],
        "lifecycle_per_s": backlog.lifecycle / consumed[LIFECYCLE_GROUP],
        "ceiling_s": ceiling_s,
        "ceiling_records_per_s": backlog.total / ceiling_s,
        "rows": rows,
        "delivered_s": delivered_s,
        "messages_after_delivery": delivered,
        "sent_per_s": delivered.get("sent", 0) / delivered_s,
    }
    figures["ratio_to_ceiling"] = figures["decisions_per_s"] / figures["ceiling_records_per_s"]
    print(
        f"run {run}: {figures['decisions_per_s']:,.0f} events/s ({drain_s:.1f} s; touchpoints group"
        f" {consumed[TOUCHPOINTS_GROUP]:.1f} s, lifecycle group {consumed[LIFECYCLE_GROUP]:.1f} s);"
        f" ceiling {figures['ceiling_records_per_s']:,.0f} records/s; runs {rows['runs']}, messages {rows['messages']}",
        flush=True,
    )
    print(
        f"run {run}: every due message delivered {delivered_s:.1f} s after the spawn:"
        f" {figures['sent_per_s']:,.0f} sent/s; messages {delivered}",
        flush=True,
    )
    return figures


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def latency_run(kafka: str, database_url: str, topics: Topics, scratch: Path) -> dict[str, Any]:
    """New customers trigger "Bench Wait" evenly over LATENCY_SECONDS; wait due time -> the sink receiving the mail."""
    folder = scratch / "campaigns"
    folder.mkdir()
    (folder / "bench-wait.yaml").write_text(BENCH_CAMPAIGN)
    mail = scratch / "mail"
    ends = await end_offsets(kafka, [topics.touchpoints, topics.stage_changes])
    await reset_groups(kafka, topics, ends, to_end=True)  # the new service starts after the backlog
    async with MailSink(mail) as sink:
        port = free_port()
        env = {
            **service_env(kafka, database_url, "lat_", port, scratch),
            "CLM_CAMPAIGNS_DIR": str(folder),
            "CLM_SMTP_HOST": "127.0.0.1",
            "CLM_SMTP_PORT": str(sink.port),
        }
        log = (scratch / "service-latency.log").open("wb")
        service = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "campaigns", env=env, stdout=log, stderr=log
        )
        publisher = Publisher(kafka, client_id="bench-latency")
        serialize = JsonSerializer()
        due: dict[str, float] = {}
        try:
            await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}")
            await asyncio.sleep(2)  # the consumers' partitions assigned
            per_tick = 10
            ticks = max(1, LATENCY_CUSTOMERS // per_tick)
            interval = LATENCY_SECONDS / ticks
            began = time.monotonic()
            for n in range(ticks):
                delay = began + n * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = datetime.now(UTC)
                records = []
                for i in range(per_tick):
                    customer = f"lat-{n * per_tick + i}"
                    wait = _touchpoint(customer, 1, now, "track", "Bench Wait", {}, {})
                    for tp in (identify(customer, n * per_tick + i, now), wait):
                        records.append(OutgoingRecord(topics.touchpoints, serialize(tp), key=customer.encode()))
                    due[f"{customer}@example.com"] = now.timestamp() + WAIT_S
                await publisher.publish_many(records)
            deadline = time.monotonic() + WAIT_S + 60
            while time.monotonic() < deadline:
                if mail.is_dir() and sum(1 for p in mail.iterdir() if p.suffix == ".eml") >= len(due):
                    break
                await asyncio.sleep(0.5)
        finally:
            await publisher.stop()
            service.terminate()
            await asyncio.wait_for(service.wait(), 60)
    delays: list[float] = []
    for stored in stored_mail(mail):
        received = datetime.strptime(stored.id[:22], "%Y%m%d-%H%M%S-%f").replace(tzinfo=UTC).timestamp()
        to = str(stored.message["To"])
        if to in due:
            delays.append(received - due[to])
    if not delays:
        raise SystemExit("no mail reached the sink")
    delays.sort()
    return {
        "customers": len(due),
        "received": len(delays),
        "wait_s": WAIT_S,
        "spread_s": LATENCY_SECONDS,
        "p50_s": percentile(delays, 0.5),
        "p99_s": percentile(delays, 0.99),
        "max_s": delays[-1],
        "min_s": delays[0],
    }


def median_range(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [float(run[key]) for run in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    now = datetime.now(UTC)
    topics = Topics()
    with scratch_infra("campaigns") as infra:
        kafka, postgres = infra.kafka, infra.postgres
        asyncio.run(ensure_topics(kafka.bootstrap, {name: PARTITIONS for name in topics.all()}))
        print(f"writing touchpoints and lifecycle events for {CUSTOMERS:,} customers...", flush=True)
        backlog, written_s = asyncio.run(write_backlog(kafka.bootstrap, topics, now))
        print(
            f"  {backlog.touchpoints:,} touchpoints, {backlog.lifecycle:,} lifecycle events in {written_s:.1f} s:"
            f" {dict(sorted(backlog.kinds.items()))}",
            flush=True,
        )
        runs = [
            throughput_run(run, kafka.bootstrap, postgres.url, topics, backlog, infra.scratch)
            for run in range(1, RUNS + 1)
        ]
        print(f"delay of waits: {LATENCY_CUSTOMERS:,} customers over {LATENCY_SECONDS:.0f} s, wait {WAIT_S} s...")
        latency = asyncio.run(latency_run(kafka.bootstrap, postgres.url, topics, infra.scratch))
    rate = median_range(runs, "decisions_per_s")
    ceiling = median_range(runs, "ceiling_records_per_s")
    ratio = median_range(runs, "ratio_to_ceiling")
    summary = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "customers": CUSTOMERS,
        "touchpoints": backlog.touchpoints,
        "lifecycle_events": backlog.lifecycle,
        "backlog": dict(sorted(backlog.kinds.items())),
        "partitions": PARTITIONS,
        "sender": "no-op (bench.campaigns.service.NoopSender)",
        "backlog_write_s": written_s,
        "decisions_per_s": rate,
        "ceiling_records_per_s": ceiling,
        "ratio_to_ceiling": ratio,
        "sent_per_s": median_range(runs, "sent_per_s"),
        "runs": runs,
        "wait_delay": latency,
    }
    print(
        f"campaigns benchmark ({backlog.touchpoints:,} touchpoints + {backlog.lifecycle:,} lifecycle events,"
        f" {CUSTOMERS:,} customers, 8 shipped campaigns, no-op sender)"
    )
    print(
        f"  decisions       : {rate['median']:9,.0f} events/s (median of {len(runs)}, {rate['min']:,.0f}-"
        f"{rate['max']:,.0f}; start-up included)"
    )
    print(
        f"  ceiling         : {ceiling['median']:9,.0f} records/s fetch + decode ({ceiling['min']:,.0f}-"
        f"{ceiling['max']:,.0f}); ratio {ratio['median']:.0%} ({ratio['min']:.0%}-{ratio['max']:.0%})"
    )
    sent = median_range(runs, "sent_per_s")
    print(f"  rows (run 1)    : runs {runs[0]['rows']['runs']}, messages {runs[0]['rows']['messages']}")
    print(
        f"  delivery        : {sent['median']:9,.0f} sent/s with the no-op sender"
        f" ({sent['min']:,.0f}-{sent['max']:,.0f}; from the spawn until no message is pending and due)"
    )
    print(
        f"  wait due -> mail: p50 {latency['p50_s'] * 1000:.0f} ms, p99 {latency['p99_s'] * 1000:.0f} ms,"
        f" max {latency['max_s'] * 1000:.0f} ms ({latency['received']:,} of {latency['customers']:,} received)"
    )
    write_results("campaigns", summary)


if __name__ == "__main__":
    main()
