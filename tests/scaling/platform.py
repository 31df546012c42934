"""Two instances of every consumer service on a 3-broker Kafka cluster of the test's own, and what they leave.

The cluster is the launcher's (``KafkaCluster``): three combined KRaft nodes with small heaps, topics
replicated 3 times with ``min.insync.replicas`` 2. PostgreSQL is the session's, under a namespace of
this run. Every service instance is a real process (``python -m <module>``) on a port of its own, in
the same consumer groups as its twin; one mail sink takes both campaigns instances' mail.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from sqlalchemy import text

from campaigns.consumers import LIFECYCLE_GROUP as CAMPAIGNS_LIFECYCLE
from campaigns.consumers import TOUCHPOINTS_GROUP as CAMPAIGNS_TOUCHPOINTS
from campaigns.mail_sink import is_mail_sink
from clm_cli.infra.kafka import KafkaCluster
from clm_cli.infra.process import free_port, free_ports
from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import partitions_of
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from metrics.consumers import LIFECYCLE_GROUP as METRICS_LIFECYCLE
from metrics.consumers import TOUCHPOINTS_GROUP as METRICS_TOUCHPOINTS
from stage_engine.app import GROUP_ID as ENGINE_GROUP
from tests.e2e.conftest import settings_env
from tests.infra import ROOT, _scratch_dir
from tests.secret_watch import read_log, remember_secret, watch_output
from tests.waiting import wait_for

PARTITIONS = 6
REPLICAS = 3
CONSUMERS = {"stage-engine": "stage_engine", "metrics": "metrics", "campaigns": "campaigns"}
# instance name -> module: ingest once, each consumer service twice
INSTANCES = {"ingest": "ingest"} | {f"{name}-{n}": module for name, module in CONSUMERS.items() for n in (1, 2)}


@contextmanager
def kafka_cluster() -> Iterator[KafkaCluster]:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections while nodes start or die
    scratch = _scratch_dir("cluster")
    cluster = KafkaCluster(cache_dir=ROOT / ".cache", data_dir=scratch, port=free_ports(6), brokers=3, heap_mb=320)
    cluster.install()
    cluster.start()
    try:
        cluster.wait_ready(timeout_s=180)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def shop_traffic(customers: int, start: datetime) -> list[list[dict[str, Any]]]:
    """The same shop's traffic every time, as 20-call batches, each customer at most once per batch.

    Step by step across customers, so a batch answered 503 and sent again cannot reorder one customer's
    calls. Times are recent: no campaign trigger is stale and no inactivity timer comes due.
    """
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("page", "Home", {}),
        ("track", "Product Viewed", {"product_id": "p-1", "price": 30}),
        ("track", "Signed Up", {}),
        ("track", "Checkout Started", {"checkout_id": "k"}),
        ("track", "Order Completed", {"checkout_id": "k", "revenue": 60, "currency": "EUR"}),
        ("track", "NPS Survey Answered", {"score": 9}),
        ("track", "Order Completed", {"revenue": 80, "currency": "EUR"}),
        ("track", "Referral Sent", {}),
    ]
    calls: list[dict[str, Any]] = [
        {
            "type": "identify",
            "userId": f"s{n}",
            "messageId": f"s{n}-identify",
            "traits": {"email": f"s{n}@example.test", "first_name": f"S{n}"},
            "timestamp": start.isoformat(),
        }
        for n in range(customers)
    ]
    for i, (kind, name, properties) in enumerate(steps):
        for n in range(customers):
            props = {k: (f"k{n}" if k == "checkout_id" else v) for k, v in properties.items()}
            calls.append(
                {
                    "type": kind,
                    "userId": f"s{n}",
                    "messageId": f"s{n}-{i}",
                    ("event" if kind == "track" else "name"): name,
                    "properties": props,
                    "timestamp": (start + timedelta(seconds=10 * i + n / customers)).isoformat(),
                }
            )
    return [calls[i : i + 20] for i in range(0, len(calls), 20)]


@dataclass
class Sender:
    """Sends its batches in order, each until answered 200 (as Segment's libraries retry), same messageIds.

    A 503 (Kafka did not acknowledge in time) or a transport error is retried after a short pause;
    ``acked`` counts the batches answered 200, ``refused`` the answers that were not.
    """

    url: str
    key: str
    batches: list[list[dict[str, Any]]]
    per_second: float = 2.0
    acked: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, auth=(self.key, ""), timeout=15) as client:
            for batch in self.batches:
                began = time.monotonic()
                body = orjson.dumps({"batch": batch})
                while True:
                    try:
                        answer = await client.post("/v1/batch", content=body)
                    except httpx.TransportError as exc:
                        self.refused[type(exc).__name__] += 1
                    else:
                        if answer.status_code == 200:
                            break
                        assert answer.status_code == 503, answer.text
                        self.refused["503"] += 1
                    await asyncio.sleep(0.2)
                self.acked += 1
                await asyncio.sleep(max(0.0, 1 / self.per_second - (time.monotonic() - began)))

    def message_ids(self) -> set[str]:
        return {call["messageId"] for batch in self.batches[: self.acked] for call in batch}


class ScaledPlatform:
    """ingest ×1 and stage-engine, metrics, campaigns ×2 each, in one namespace on the cluster."""

    def __init__(self, cluster: KafkaCluster, settings: Settings, scratch: Path) -> None:
        self.cluster = cluster
        self.settings = settings
        self.namespace = settings.topic_namespace
        self.topics = Topics(self.namespace)
        self.scratch = scratch
        self.ports = {name: free_port() for name in INSTANCES}
        # One data dir and one set of keys for all: twins must sign links and hash erased ids alike.
        self.env = settings_env(settings, scratch, {})
        self.env.update(
            {
                "CLM_KAFKA_REPLICATION_FACTOR": str(settings.kafka_replication_factor),
                "CLM_ADMIN_TOKEN": remember_secret("admin-" + secrets.token_urlsafe(24)),
                "CLM_CAMPAIGNS_SIGNING_KEY": remember_secret(secrets.token_urlsafe(32)),
                "CLM_WEBHOOK_SECRET": remember_secret(secrets.token_urlsafe(32)),
                "CLM_ERASURE_KEY": remember_secret(secrets.token_urlsafe(32)),
                "CLM_SMTP_HOST": "127.0.0.1",
                "CLM_SMTP_PORT": str(free_port()),
                "CLM_CAMPAIGNS_QUIET_HOURS": "",  # the same sends whatever the hour the test runs at
            }
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def admin_token(self) -> str:
        return self.env["CLM_ADMIN_TOKEN"]

    def spawn(self, name: str, module: str) -> None:
        env = dict(self.env)
        if name in self.ports:
            service = name if name == "ingest" else name.rpartition("-")[0]
            env[f"CLM_{service.replace('-', '_').upper()}_PORT"] = str(self.ports[name])
        with (self.scratch / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=log)

    async def start_all(self) -> None:
        self.spawn("mail-sink", "campaigns.mail_sink")
        await wait_for(lambda: is_mail_sink(int(self.env["CLM_SMTP_PORT"])), what="the mail sink")
        for name, module in INSTANCES.items():
            self.spawn(name, module)
        for name in INSTANCES:
            await wait_for(functools.partial(self._ready, name), timeout_s=180, what=f"{name} ready")

    async def _ready(self, name: str) -> bool:
        if self.processes[name].poll() is not None:
            pytest.fail(f"{name} exited:\n" + read_log(self.scratch / f"{name}.log")[-3000:])
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(self.url(name) + "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        for name in self.processes:
            watch_output(f"{name} log (scaling)", read_log(self.scratch / f"{name}.log"))

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "clm_cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    def groups(self) -> dict[str, list[str]]:
        """Each consumer group (namespaced) and the topics its members read."""
        t = self.topics
        return {
            self.namespace + ENGINE_GROUP: [t.touchpoints],
            self.namespace + METRICS_TOUCHPOINTS: [t.touchpoints],
            self.namespace + METRICS_LIFECYCLE: [t.stage_changes, t.campaign_events],
            self.namespace + CAMPAIGNS_TOUCHPOINTS: [t.touchpoints],
            self.namespace + CAMPAIGNS_LIFECYCLE: [t.stage_changes],
        }

    async def settled(self) -> None:
        """Until every group has consumed everything and no outbox or due mail waits."""

        async def done() -> bool:
            return await self._all_consumed() and await self._nothing_pending()

        await wait_for(done, timeout_s=180, what="the platform to process everything")

    async def _all_consumed(self) -> bool:
        bootstrap = self.settings.kafka_bootstrap
        topics = {topic for group_topics in self.groups().values() for topic in group_topics}
        partitions = [TopicPartition(t, p) for t in topics for p in await partitions_of(bootstrap, t)]
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await consumer.start()
        await admin.start()
        try:
            ends = await consumer.end_offsets(partitions)
            for group, group_topics in self.groups().items():
                committed = await admin.list_consumer_group_offsets(group)
                for tp, end in ends.items():
                    if tp.topic in group_topics and end > 0 and (tp not in committed or committed[tp].offset < end):
                        return False
            return True
        finally:
            await consumer.stop()
            await admin.close()

    async def _nothing_pending(self) -> bool:
        checks = {
            "stage-engine": ["SELECT count(*) FROM outbox"],
            "campaigns": [
                "SELECT count(*) FROM outbox",
                "SELECT count(*) FROM messages WHERE status = 'pending' AND due_at <= now()",
            ],
        }
        for service, queries in checks.items():
            for query in queries:
                if await self.scalar(service, query):
                    return False
        return True

    async def scalar(self, service: str, query: str) -> Any:
        engine = create_engine(self.settings.database_url, schema=service_schema(self.settings, service), pool_size=1)
        try:
            async with engine.connect() as conn:
                return await conn.scalar(text(query))
        finally:
            await engine.dispose()

    async def rows(self, service: str, query: str) -> list[Any]:
        engine = create_engine(self.settings.database_url, schema=service_schema(self.settings, service), pool_size=1)
        try:
            async with engine.connect() as conn:
                return list(await conn.execute(text(query)))
        finally:
            await engine.dispose()


async def group_assignments(bootstrap: str, group: str) -> list[set[tuple[str, int]]]:
    """The partitions each live member of a consumer group holds (one set per member)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = []
    for response in described:
        for g in response.to_object()["groups"]:
            if g["group"] != group or g["state"] != "Stable":
                continue
            for member in g["members"]:
                raw = member["member_assignment"]
                assignment = ConsumerProtocolMemberAssignment.decode(raw).assignment if raw else []
                members.append({(topic, p) for topic, partitions in assignment for p in partitions})
    return members


async def topic_settings(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, int, str]]:
    """Per topic: partitions, replicas of each partition (the least), and its ``min.insync.replicas``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    min_isr = {
        resource["resource_name"]: entry["config_value"]
        for response in configs
        for resource in response.to_object()["resources"]
        for entry in resource["config_entries"]
        if entry["config_names"] == "min.insync.replicas"
    }
    return {
        t["topic"]: (len(t["partitions"]), min(len(p["replicas"]) for p in t["partitions"]), min_isr[t["topic"]])
        for t in described
    }


async def partition_leaders(bootstrap: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: p["leader"] for t in described for p in t["partitions"]}


async def fully_replicated(bootstrap: str, topics: list[str]) -> bool:
    """Every partition's in-sync replica set holds all of its replicas again."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return all(set(p["isr"]) == set(p["replicas"]) for t in described for p in t["partitions"])


async def read_all(bootstrap: str, topic: str) -> list[bytes]:
    """Every record on the topic now (to its end offsets)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
        ends = await consumer.end_offsets(partitions)
        values: list[bytes] = []
        while True:
            behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
            if not behind:
                return values
            for records in (await consumer.getmany(*behind, timeout_ms=500)).values():
                values += [r.value for r in records if r.value is not None]
    finally:
        await consumer.stop()
