"""The whole platform as real processes on a broker and a database of its own, and a client that keeps sending.

Fault tests stop, freeze and restart the broker and PostgreSQL, so they do not share the session's.
Each run gets its own topic and schema namespace on them; the four services and the mail sink are
started as `clm up` starts them and can be SIGKILLed and started again one by one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
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
from campaigns.mail_sink import is_mail_sink, mail_dir, stored_mail
from clm_cli.infra.kafka import KafkaServer
from clm_cli.infra.postgres import PostgresServer
from clm_cli.infra.process import free_port, two_free_ports
from clm_shared.cloudevents import decode
from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import ensure_topics, partitions_of
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from metrics.consumers import LIFECYCLE_GROUP as METRICS_LIFECYCLE
from metrics.consumers import TOUCHPOINTS_GROUP as METRICS_TOUCHPOINTS
from stage_engine.app import GROUP_ID as ENGINE_GROUP
from tests.conftest import TEST_PARTITIONS, make_settings
from tests.e2e.conftest import settings_env
from tests.infra import ROOT, _scratch_dir
from tests.secret_watch import read_log, remember_secret, watch_output
from tests.utils.engine_state import snapshot
from tests.waiting import wait_for

SERVICES = {"ingest": "ingest", "stage-engine": "stage_engine", "metrics": "metrics", "campaigns": "campaigns"}


@dataclass
class Infra:
    kafka: KafkaServer
    postgres: PostgresServer
    scratch: Path


@contextmanager
def own_infra() -> Iterator[Infra]:
    """A broker and a PostgreSQL server of these tests' own (native: they are stopped and frozen)."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connects while the broker is away
    scratch = _scratch_dir("faults")
    kafka = KafkaServer(cache_dir=ROOT / ".cache", data_dir=scratch / "kafka", port=two_free_ports(), heap_mb=512)
    postgres = PostgresServer(data_dir=scratch / "pg", port=free_port())
    kafka.install()
    kafka.start()
    postgres.start()
    try:
        kafka.wait_ready()
        postgres.ensure_database()
        yield Infra(kafka, postgres, scratch)
    finally:
        kafka.stop()
        postgres.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def shop_traffic(customers: int, start: datetime) -> list[list[dict[str, Any]]]:
    """The same shop's traffic every time, as 20-call batches, each customer at most once per batch.

    Step by step across customers, so a batch that is answered 503 and sent again cannot reorder one
    customer's calls. Times are recent: no campaign trigger is stale and no inactivity timer is due.
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
    calls: list[dict[str, Any]] = []
    for n in range(customers):
        calls.append(
            {
                "type": "identify",
                "userId": f"f{n}",
                "messageId": f"f{n}-identify",
                "traits": {"email": f"f{n}@example.test", "first_name": f"F{n}"},
                "timestamp": start.isoformat(),
            }
        )
    for i, (kind, name, properties) in enumerate(steps):
        for n in range(customers):
            props = dict(properties)
            if "checkout_id" in props:
                props["checkout_id"] = f"k{n}"
            calls.append(
                {
                    "type": kind,
                    "userId": f"f{n}",
                    "messageId": f"f{n}-{i}",
                    ("event" if kind == "track" else "name"): name,
                    "properties": props,
                    "timestamp": (start + timedelta(seconds=10 * i + n / customers)).isoformat(),
                }
            )
    return [calls[i : i + 20] for i in range(0, len(calls), 20)]


@dataclass
class Sender:
    """A client that sends its batches in order, each until acknowledged, as Segment's libraries retry.

    A 503 (the broker is away), a refused connection (ingest is down) or a timeout is retried after a
    short pause; ``acked`` counts the batches answered 200, ``refused`` the answers that were not.
    """

    url: str
    key: str
    batches: list[list[dict[str, Any]]]
    per_second: float = 8.0
    acked: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    last_refusal: str = ""

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, auth=(self.key, ""), timeout=10) as client:
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


class Platform:
    """The four services and the mail sink of one run, in its own namespace on the shared ``Infra``."""

    def __init__(self, infra: Infra, label: str) -> None:
        self.infra = infra
        self.namespace = f"t{uuid.uuid4().hex[:8]}_"
        self.settings: Settings = make_settings(infra.kafka.bootstrap, infra.postgres.url, self.namespace)
        self.topics = Topics(self.namespace)
        self.scratch = infra.scratch / label
        self.scratch.mkdir()
        self.ports = {name: free_port() for name in SERVICES}
        self.env = settings_env(self.settings, self.scratch, self.ports)
        self.env["CLM_ADMIN_TOKEN"] = remember_secret("admin-" + secrets.token_urlsafe(24))
        self.env["CLM_SMTP_HOST"], self.env["CLM_SMTP_PORT"] = "127.0.0.1", str(free_port())
        self.env["CLM_CAMPAIGNS_QUIET_HOURS"] = ""  # the same sends whatever the hour the test runs at
        self.env["CLM_LOG_LEVEL"] = "INFO"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    async def start_all(self) -> None:
        await ensure_topics(self.settings.kafka_bootstrap, {t: TEST_PARTITIONS for t in self.topics.all()})
        self.spawn("mail-sink", "campaigns.mail_sink")
        await wait_for(lambda: is_mail_sink(int(self.env["CLM_SMTP_PORT"])), what="the mail sink")
        for name in SERVICES:
            await self.start(name)

    def spawn(self, name: str, module: str) -> None:
        log = (self.scratch / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen([sys.executable, "-m", module], env=self.env, stdout=log, stderr=log)

    async def start(self, name: str) -> None:
        self.spawn(name, SERVICES[name])
        await wait_for(lambda: self._ready(name), timeout_s=90, what=f"{name} ready")

    async def _ready(self, name: str) -> bool:
        if self.processes[name].poll() is not None:
            pytest.fail(f"{name} exited:\n" + read_log(self.scratch / f"{name}.log")[-3000:])
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(self.url(name) + "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, name: str) -> str:
        return f"{name} log:\n" + read_log(self.scratch / f"{name}.log")[-3000:]

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for name in self.processes:
            watch_output(f"{name} log (faults)", read_log(self.scratch / f"{name}.log"))

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

    async def settled(self) -> None:
        """Until every group has consumed everything, the engine's outbox is empty and no due mail waits."""

        async def done() -> bool:
            return await self._all_consumed() and await self._nothing_pending()

        await wait_for(done, timeout_s=180, what="the platform to process everything")

    async def _all_consumed(self) -> bool:
        groups = {
            ENGINE_GROUP: [self.topics.touchpoints],
            METRICS_TOUCHPOINTS: [self.topics.touchpoints],
            METRICS_LIFECYCLE: [self.topics.stage_changes],
            CAMPAIGNS_TOUCHPOINTS: [self.topics.touchpoints],
            CAMPAIGNS_LIFECYCLE: [self.topics.stage_changes],
        }
        bootstrap = self.settings.kafka_bootstrap
        topics = [self.topics.touchpoints, self.topics.stage_changes]
        partitions = [TopicPartition(t, p) for t in topics for p in await partitions_of(bootstrap, t)]
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await consumer.start()
        await admin.start()
        try:
            ends = await consumer.end_offsets(partitions)
            for group, group_topics in groups.items():
                committed = await admin.list_consumer_group_offsets(self.namespace + group)
                for tp, end in ends.items():
                    if tp.topic in group_topics and end > 0 and (tp not in committed or committed[tp].offset < end):
                        return False
            return True
        finally:
            await consumer.stop()
            await admin.close()

    async def _nothing_pending(self) -> bool:
        checks = {
            "stage-engine": "SELECT count(*) FROM outbox",
            "campaigns": "SELECT count(*) FROM messages WHERE status = 'pending' AND due_at <= now()",
        }
        for service, query in checks.items():
            engine = create_engine(self.settings.database_url, schema=service_schema(self.settings, service))
            try:
                async with engine.connect() as conn:
                    if await conn.scalar(text(query)):
                        return False
            finally:
                await engine.dispose()
        return True

    async def outcome(self, token: str) -> Outcome:
        """What a run leaves behind, to compare with an undisturbed run of the same traffic."""
        state = await snapshot(self.settings)
        changes = await _read_all(self.settings.kafka_bootstrap, self.topics.stage_changes)
        envelopes = [decode(value) for value in changes]
        mails = stored_mail(mail_dir(Settings(data_dir=Path(self.env["CLM_DATA_DIR"]))))
        sent = Counter(
            (parseaddr(str(m.message["To"]))[1], str(m.message["Subject"]), str(m.message["Message-ID"])) for m in mails
        )
        return Outcome(
            customers=state["customers"],
            processed=state["processed"],
            change_ids=Counter(e.id for e in envelopes),
            changes={(e.subject, e.type, orjson.dumps(e.data, option=orjson.OPT_SORT_KEYS)) for e in envelopes},
            mails=sent,
            metrics=self._metrics(token),
        )

    def _metrics(self, token: str) -> dict[str, Any]:
        """Every metric over the traffic's days (model fits, refit on a timer, left out), the funnel, the stages."""
        headers = {"Authorization": f"Bearer {token}"}
        base = self.url("metrics") + "/v1"
        today = datetime.now(UTC).date()
        window = {"from": (today - timedelta(days=3)).isoformat(), "to": today.isoformat()}
        answers = {
            "metrics": httpx.get(base + "/metrics", params=window, headers=headers),
            "funnel": httpx.get(base + "/funnel", headers=headers),
            "stages": httpx.get(base + "/stages", headers=headers),
        }
        for name, answer in answers.items():
            assert answer.status_code == 200, f"{name}: {answer.status_code} {answer.text}"
        values = {name: answer.json() for name, answer in answers.items()}
        for value in values.values():
            value.pop("at", None)  # when the answer was made, not what it says
        values["metrics"]["metrics"] = {
            name: value for name, value in values["metrics"]["metrics"].items() if "predicted" not in name
        }
        return values


@dataclass
class Outcome:
    customers: dict[str, Any]
    processed: int
    change_ids: Counter[str]
    changes: set[tuple[str, str, bytes]]
    mails: Counter[tuple[str, str, str]]
    metrics: dict[str, Any]


async def _read_all(bootstrap: str, topic: str) -> list[bytes]:
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


def freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)
