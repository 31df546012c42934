"""SIGKILL the campaigns service during a wait and during delivery: after a restart nothing is lost or sent twice.

The service runs as a real process (``python -m campaigns``) on a free port, with its own namespace and a
campaign folder: trigger ``Bench Wait``, wait 4s, send an email. The SMTP server is a ``MailSink`` in this
test's event loop. Delivery sends while the message rows stay locked and marks them sent in the same
transaction, so a kill between an SMTP ``250`` and that commit means the mail is sent again on restart, under
the same Message-ID (a receiver drops it). Any other repeat, or a second message to one customer, is a bug.

Duplicate stage-change events (the same CloudEvent twice, the same stage under a new id) are covered
in-process by ``tests/integration/campaigns/test_delivery.py``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.ext.asyncio import AsyncEngine

from campaigns.mail_sink import MailSink, SinkHandler
from clm_cli.infra.process import free_port
from clm_shared.cloudevents import decode
from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import ensure_topics
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.lifecycle import EventType
from clm_shared.serde import JsonSerializer
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from clm_shared.transactions import transaction
from tests.conftest import TEST_PARTITIONS, drop_schemas, make_settings
from tests.e2e.conftest import settings_env
from tests.secret_watch import read_log, watch_output
from tests.utils.factories import touchpoint
from tests.utils.kafka import read_records
from tests.waiting import wait_for

CAMPAIGN = "bench-wait"
CUSTOMERS = [f"crash-{n:02d}" for n in range(20)]
DOMAIN = "example.test"
DEFINITION = {
    "id": CAMPAIGN,
    "name": "Bench wait",
    "trigger": {"event": "Bench Wait"},
    "quiet_hours": False,
    "holdout_percent": 0,
    "steps": [
        {"type": "wait", "duration": "4s"},
        {
            "type": "send",
            "name": "after-wait",
            "template": {"subject": "Your bench, {{ customer.id }}", "html": "<p>Hi</p>", "text": "Hi"},
        },
    ],
}


class RecordingHandler(SinkHandler):
    """The sink's handler, calling ``on_stored`` (when set) right after each message is written."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.on_stored: Callable[[], None] | None = None
        self.in_flight = 0  # messages being written

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_flight += 1
        try:
            answer = await super().handle_DATA(server, session, envelope)
        finally:
            self.in_flight -= 1
        if self.on_stored is not None:
            self.on_stored()
        return answer


@dataclass
class Service:
    """The campaigns process, started and SIGKILLed at will; its log collects every life."""

    env: dict[str, str]
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    lives: list[int] = field(default_factory=list)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "campaigns"], env=self.env, stdout=out, stderr=out)
        self.lives.append(self.process.pid)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, no transaction in flight commits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    async def ready(self) -> None:
        async def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail("campaigns exited:\n" + read_log(self.log)[-3000:])
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(self.url + "/readyz", timeout=2)).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(answers, timeout_s=60, what="campaigns ready")


@dataclass
class Crash:
    settings: Settings
    topics: Topics
    service: Service
    sink: MailSink
    handler: RecordingHandler
    engine: AsyncEngine

    async def rows(self, sql: str, *args: Any) -> list[Any]:
        async with transaction(self.engine) as db:
            return list(await db.fetch(sql, *args))

    async def count(self, sql: str, *args: Any) -> int:
        async with transaction(self.engine) as db:
            return int(await db.fetchval(sql, *args))

    def recipients(self) -> Counter[str]:
        """Mails per customer id (the address's local part: an address must never reach the test output)."""
        return Counter(str(m["To"]).split("@")[0] for m in self.sink.messages())

    async def trigger_all(self) -> None:
        now = datetime.now(UTC)
        publisher = Publisher(self.settings.kafka_bootstrap, client_id="campaigns-crash-test")
        serialize = JsonSerializer()
        try:
            await publisher.publish_many(
                [
                    OutgoingRecord(self.topics.touchpoints, serialize(tp), key=tp.customer_key.encode())
                    for customer in CUSTOMERS
                    for tp in (
                        touchpoint(
                            None, customer=customer, call_type="identify", at=now, traits={"email": address(customer)}
                        ),
                        touchpoint("Bench Wait", customer=customer, at=now, bench="b1"),
                    )
                ]
            )
        finally:
            await publisher.stop()

    async def all_waiting(self) -> None:
        async def waiting() -> bool:
            sql = "SELECT count(*) FROM runs WHERE campaign_id = $1 AND status = 'waiting'"
            return await self.count(sql, CAMPAIGN) == len(CUSTOMERS)

        await wait_for(waiting, timeout_s=30, what="every run waiting")

    async def all_sent(self) -> None:
        async def sent() -> bool:
            sql = "SELECT count(*) FROM messages WHERE campaign_id = $1 AND status = 'sent'"
            return await self.count(sql, CAMPAIGN) == len(CUSTOMERS)

        async def drained() -> bool:
            return await self.count("SELECT count(*) FROM outbox") == 0

        await wait_for(sent, timeout_s=60, what="every message sent")
        await wait_for(drained, timeout_s=30, what="the outbox relayed")

    async def assert_each_sent_once(self) -> None:
        """One message row per customer, sent; its Message-ID in the sink; one sent event per message."""
        rows = await self.rows(
            "SELECT message_id, customer_id, status, attempts FROM messages WHERE campaign_id = $1", CAMPAIGN
        )
        assert sorted(r["customer_id"] for r in rows) == CUSTOMERS
        assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 1)}  # a killed attempt is not counted
        by_customer = {r["customer_id"]: f"<clm-{r['message_id']}@clm>" for r in rows}
        for mail in self.sink.messages():
            assert mail["Message-ID"] == by_customer[str(mail["To"]).split("@")[0]]  # no other message, ever
        assert set(self.recipients()) == set(CUSTOMERS)  # nobody left out
        runs = await self.rows("SELECT status FROM runs WHERE campaign_id = $1", CAMPAIGN)
        assert [r["status"] for r in runs] == ["done"] * len(CUSTOMERS)

        records = await read_records(self.settings.kafka_bootstrap, self.topics.campaign_events, len(CUSTOMERS))
        events = [decode(r.value) for r in records]
        assert {e.type for e in events} == {EventType.CAMPAIGN_SENT}
        # a relay killed between publish and delete may repeat an event, with its id: one id per message
        ids_by_message: dict[int, set[str]] = {}
        for event in events:
            ids_by_message.setdefault(int(event.data["message_id"]), set()).add(event.id)
        assert sorted(ids_by_message) == sorted(r["message_id"] for r in rows)
        assert all(len(ids) == 1 for ids in ids_by_message.values())


def address(customer: str) -> str:
    return f"{customer}@{DOMAIN}"


@asynccontextmanager
async def campaigns_process(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Crash]:
    namespace = f"t{uuid.uuid4().hex[:10]}_"
    settings = make_settings(kafka_bootstrap, database_url, namespace)
    topics = Topics(namespace)
    await ensure_topics(kafka_bootstrap, {name: TEST_PARTITIONS for name in topics.all()})
    scratch = Path(tempfile.mkdtemp(prefix="clm-campaigns-crash-"))
    (scratch / "campaigns").mkdir()
    (scratch / "campaigns" / f"{CAMPAIGN}.yaml").write_text(json.dumps(DEFINITION), encoding="utf-8")
    port = free_port()
    engine = create_engine(database_url, schema=service_schema(settings, "campaigns"), pool_size=2)
    service: Service | None = None
    try:
        async with MailSink(scratch / "mail") as sink:
            handler = RecordingHandler(sink.directory)
            sink.handler = handler  # read at each connection
            env = settings_env(settings, scratch, {"campaigns": port})
            env.update(
                {
                    "CLM_SMTP_HOST": "127.0.0.1",
                    "CLM_SMTP_PORT": str(sink.port),
                    "CLM_CAMPAIGNS_DIR": str(scratch / "campaigns"),
                    "CLM_CAMPAIGNS_QUIET_HOURS": "",
                    "CLM_CAMPAIGNS_HOLDOUT_PERCENT": "0",
                    "CLM_CAMPAIGNS_TICK_INTERVAL_S": "0.1",
                }
            )
            service = Service(env, f"http://127.0.0.1:{port}", scratch / "campaigns.log")
            service.start()
            await service.ready()
            try:
                yield Crash(settings, topics, service, sink, handler, engine)
            finally:
                service.stop()
    finally:
        await engine.dispose()
        if (scratch / "campaigns.log").exists():
            watch_output("campaigns log (crash test)", read_log(scratch / "campaigns.log"))
        shutil.rmtree(scratch, ignore_errors=True)
        await drop_schemas(database_url, namespace)


async def kill_while_waiting(crash: Crash) -> None:
    """Trigger every customer, SIGKILL once all runs wait, check nothing was sent yet, and start again."""
    await crash.trigger_all()
    await crash.all_waiting()
    crash.service.kill()
    killed_at = datetime.now(UTC)
    due = await crash.rows("SELECT due_at FROM runs WHERE campaign_id = $1", CAMPAIGN)
    assert all(r["due_at"] > killed_at for r in due), "a wait ended before the kill: the test proves nothing"
    assert await crash.count("SELECT count(*) FROM messages WHERE campaign_id = $1", CAMPAIGN) == 0
    assert crash.sink.messages() == []
    crash.service.start()


async def test_a_kill_during_the_wait_loses_no_send_and_repeats_none(kafka_bootstrap: str, database_url: str) -> None:
    async with campaigns_process(kafka_bootstrap, database_url) as crash:
        await kill_while_waiting(crash)
        await crash.all_sent()
        assert crash.recipients() == Counter(dict.fromkeys(CUSTOMERS, 1))
        assert len({m["Message-ID"] for m in crash.sink.messages()}) == len(CUSTOMERS)
        await crash.assert_each_sent_once()
        assert len(crash.service.lives) == 2


async def test_a_kill_as_the_first_mails_arrive_repeats_only_those_under_their_message_id(
    kafka_bootstrap: str, database_url: str
) -> None:
    async with campaigns_process(kafka_bootstrap, database_url) as crash:
        killed: list[bool] = []

        def kill_on_first_mail() -> None:
            crash.handler.on_stored = None
            crash.service.kill()
            killed.append(True)

        crash.handler.on_stored = kill_on_first_mail
        await kill_while_waiting(crash)
        await wait_for(lambda: bool(killed), timeout_s=30, what="the first mail, and the kill")
        # what the dead process had fully sent may still sit in the sink's socket buffers: wait until the
        # sink has written it all (nothing being written, and the same count on consecutive polls)
        counts: list[int] = []

        def drained() -> bool:
            counts.append(len(crash.sink.messages()))
            return crash.handler.in_flight == 0 and len(counts) >= 5 and len(set(counts[-5:])) == 1

        await wait_for(drained, what="mail accepted before the kill written")
        stored_at_kill = {str(m["Message-ID"]) for m in crash.sink.messages()}
        print(f"mails stored at the kill: {len(stored_at_kill)}")
        assert 1 <= len(stored_at_kill) < len(CUSTOMERS), "not killed mid-delivery: the test proves nothing"
        assert await crash.count("SELECT count(*) FROM messages WHERE status = 'sent'") == 0  # nothing committed

        crash.service.start()
        await crash.all_sent()
        ids = Counter(str(m["Message-ID"]) for m in crash.sink.messages())
        assert len(ids) == len(CUSTOMERS)  # every message delivered, and no customer got a second, different one
        repeated = {message_id for message_id, n in ids.items() if n > 1}
        assert repeated <= stored_at_kill  # only mail accepted before the kill is sent again ...
        assert max(ids.values()) <= 2  # ... and only once more
        await crash.assert_each_sent_once()
        assert len(crash.service.lives) == 3
