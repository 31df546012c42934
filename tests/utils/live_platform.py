"""The whole platform as real processes, a shop's traffic for it, and a client that keeps sending it.

One platform is one namespace (topics and schemas) on a broker or cluster and a PostgreSQL server
given to it, with a data dir of its own. Its instances (name -> module) are started as `clm up`
starts the services, each ``python -m <module>`` on a port of its own, and can be SIGKILLed and
started again one by one; twins of a service share its consumer groups, the data dir and the keys.
One mail sink takes every campaigns instance's mail.

Used by the fault tests (one instance a service, on a broker they stop and freeze), the scaling test
(each consumer service twice, on a 3-broker cluster) and the dashboard's live browser test.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text

from campaigns.consumers import LIFECYCLE_GROUP as CAMPAIGNS_LIFECYCLE
from campaigns.consumers import TOUCHPOINTS_GROUP as CAMPAIGNS_TOUCHPOINTS
from campaigns.mail_sink import is_mail_sink
from clm_cli.infra.process import free_port
from clm_cli.stack import create_topics
from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import partitions_of
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from metrics.consumers import LIFECYCLE_GROUP as METRICS_LIFECYCLE
from metrics.consumers import TOUCHPOINTS_GROUP as METRICS_TOUCHPOINTS
from stage_engine.app import GROUP_ID as ENGINE_GROUP
from tests.e2e.conftest import run_clm, settings_env
from tests.secret_watch import read_log, remember_secret, watch_output
from tests.waiting import wait_for

# instance name -> module: one instance of each service, named as the service
SERVICES = {"ingest": "ingest", "stage-engine": "stage_engine", "metrics": "metrics", "campaigns": "campaigns"}


def shop_traffic(customers: int, start: datetime) -> list[list[dict[str, Any]]]:
    """The same shop's traffic every time, as 20-call batches, each customer at most once per batch.

    Every customer is identified (with an email), visits, signs up, orders three times, answers a
    survey and refers a friend: every stage is reached and campaigns send mail. Step by step across
    customers, so a batch answered 503 and sent again cannot reorder one customer's calls. Times are
    recent: no campaign trigger is stale and no inactivity timer comes due.
    """
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("page", "Home", {}),
        ("track", "Product Viewed", {"product_id": "p-1", "price": 30}),
        ("track", "Signed Up", {}),
        ("track", "Product Added", {"product_id": "p-1"}),
        ("track", "Checkout Started", {"checkout_id": "k"}),
        ("track", "Order Completed", {"checkout_id": "k", "revenue": 60, "currency": "EUR"}),
        ("track", "NPS Survey Answered", {"score": 9}),
        ("track", "Order Completed", {"revenue": 80, "currency": "EUR"}),
        ("track", "Order Completed", {"revenue": 120, "currency": "EUR"}),
        ("track", "Referral Sent", {}),
    ]
    calls: list[dict[str, Any]] = [
        {
            "type": "identify",
            "userId": f"c{n}",
            "messageId": f"c{n}-identify",
            "traits": {"email": f"c{n}@example.test", "first_name": f"C{n}"},
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
                    "userId": f"c{n}",
                    "messageId": f"c{n}-{i}",
                    ("event" if kind == "track" else "name"): name,
                    "properties": props,
                    "timestamp": (start + timedelta(seconds=10 * i + n / customers)).isoformat(),
                }
            )
    return [calls[i : i + 20] for i in range(0, len(calls), 20)]


@dataclass
class Sender:
    """Sends its batches in order, each until answered 200 (as Segment's libraries retry), same messageIds.

    A 503 (Kafka did not acknowledge in time), a refused connection (ingest is down) or a timeout is
    retried after a short pause; ``acked`` counts the batches answered 200, ``refused`` the answers
    that were not, by kind, and ``last_refusal`` says what the last one was.
    """

    url: str
    key: str
    batches: list[list[dict[str, Any]]]
    per_second: float = 8.0
    timeout_s: float = 10.0
    acked: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    last_refusal: str = ""

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, auth=(self.key, ""), timeout=self.timeout_s) as client:
            for batch in self.batches:
                began = time.monotonic()
                body = orjson.dumps({"batch": batch})
                while True:
                    try:
                        answer = await client.post("/v1/batch", content=body)
                    except httpx.TransportError as exc:
                        self.refused[type(exc).__name__] += 1
                        self.last_refusal = repr(exc)
                    else:
                        if answer.status_code == 200:
                            break
                        assert answer.status_code == 503, answer.text
                        self.refused["503"] += 1
                        self.last_refusal = answer.text
                    await asyncio.sleep(0.2)
                self.acked += 1
                await asyncio.sleep(max(0.0, 1 / self.per_second - (time.monotonic() - began)))

    def message_ids(self) -> set[str]:
        """The messageIds of every acknowledged batch."""
        return {call["messageId"] for batch in self.batches[: self.acked] for call in batch}


class LivePlatform:
    """The given instances (name -> module) and a mail sink, in the namespace of ``settings``.

    ``label`` names the run in what the secret watch reports of the logs.
    """

    def __init__(
        self, settings: Settings, scratch: Path, instances: Mapping[str, str] = SERVICES, *, label: str
    ) -> None:
        self.settings = settings
        self.namespace = settings.topic_namespace
        self.topics = Topics(self.namespace)
        self.scratch = scratch
        self.instances = dict(instances)
        self.label = label
        self.ports = {name: free_port() for name in self.instances}
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
                "CLM_LOG_LEVEL": "INFO",  # what log_tail shows when something does not get through
                "PYTHONFAULTHANDLER": "1",  # a crash in C code leaves its Python stack in the log
            }
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def admin_token(self) -> str:
        return self.env["CLM_ADMIN_TOKEN"]

    async def start_all(self) -> None:
        """The topics (if missing), the mail sink, then every instance at once, until all are ready."""
        await create_topics(self.settings)
        self.spawn("mail-sink", "campaigns.mail_sink")
        await wait_for(lambda: is_mail_sink(int(self.env["CLM_SMTP_PORT"])), what="the mail sink")
        for name, module in self.instances.items():
            self.spawn(name, module)
        for name in self.instances:
            await self._wait_ready(name)

    def spawn(self, name: str, module: str) -> None:
        """``python -m module``, logging to ``<scratch>/<name>.log``; an instance on its own port."""
        env = dict(self.env)
        if name in self.ports:
            env[f"CLM_{module.upper()}_PORT"] = str(self.ports[name])
        with (self.scratch / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=log)

    async def start(self, name: str) -> None:
        """Start one instance (again), until it is ready."""
        self.spawn(name, self.instances[name])
        await self._wait_ready(name)

    async def _wait_ready(self, name: str) -> None:
        async def ready() -> bool:
            if self.processes[name].poll() is not None:
                pytest.fail(f"{name} exited:\n" + self.log_tail(name))
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(self.url(name) + "/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(ready, timeout_s=180, what=f"{name} ready")

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash ends a process: nothing flushed, nothing committed, nothing said goodbye."""
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(timeout=30)

    def log_tail(self, name: str) -> str:
        """The end of an instance's log, and how it ended if it did."""
        code = self.processes[name].poll() if name in self.processes else None
        ended = "" if code is None else f" (exited: {code if code >= 0 else signal.Signals(-code).name})"
        return f"{name} log{ended}:\n" + read_log(self.scratch / f"{name}.log")[-3000:]

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
            watch_output(f"{name} log ({self.label})", read_log(self.scratch / f"{name}.log"))

    def cli(self, *args: str) -> str:
        """`clm <args>` as an operator runs it, against this platform; its last line of output."""
        return run_clm(self.env, *args)

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
        """The first column of the first row of a query in a service's schema."""
        engine = create_engine(self.settings.database_url, schema=service_schema(self.settings, service), pool_size=1)
        try:
            async with engine.connect() as conn:
                return await conn.scalar(text(query))
        finally:
            await engine.dispose()

    async def rows(self, service: str, query: str) -> list[Any]:
        """Every row of a query in a service's schema."""
        engine = create_engine(self.settings.database_url, schema=service_schema(self.settings, service), pool_size=1)
        try:
            async with engine.connect() as conn:
                return list(await conn.execute(text(query)))
        finally:
            await engine.dispose()


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
