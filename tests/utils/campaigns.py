"""The campaigns service in-process on real Kafka, PostgreSQL and a real SMTP sink, driven through its topics."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import REGISTRY

from campaigns.app import create_app
from campaigns.consumers import LIFECYCLE_GROUP, TOUCHPOINTS_GROUP
from campaigns.mail_sink import MailSink
from clm_shared.cloudevents import decode, encode
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.lifecycle import CustomerErased, EventType, Health, HealthChanged, Stage, StageChanged
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from clm_shared.transactions import transaction
from tests.utils.clock import FakeClock
from tests.utils.kafka import read_records
from tests.waiting import wait_for


@dataclass
class CampaignsUnderTest:
    app: FastAPI
    settings: Settings
    topics: Topics
    clock: FakeClock
    sink: MailSink
    publisher: Publisher
    sequences: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sent_touchpoints: int = 0  # records published, a duplicate counted again
    sent_events: int = 0

    async def touch(self, *touchpoints: Touchpoint) -> None:
        await self.publisher.publish_many(
            [
                OutgoingRecord(self.topics.touchpoints, tp.model_dump_json().encode(), key=tp.customer_key.encode())
                for tp in touchpoints
            ]
        )
        self.sent_touchpoints += len(touchpoints)

    async def lifecycle(self, customer: str, kind: EventType, data: Any, at: datetime, *, event_id: str = "") -> str:
        """Publish one lifecycle CloudEvent as the stage engine would; returns its id."""
        self.sequences[customer] += 1
        event_id = event_id or str(uuid.uuid4())
        message = encode(
            event_id=event_id,
            event_type=kind,
            service="stage-engine",
            customer_id=customer,
            sequence=self.sequences[customer],
            time=at,
            data=data,
        )
        await self.publisher.publish(
            OutgoingRecord(
                self.topics.stage_changes, message.value, key=customer.encode(), headers=tuple(message.headers.items())
            )
        )
        self.sent_events += 1
        return event_id

    async def stage(self, customer: str, to: Stage, at: datetime, *, event_id: str = "") -> str:
        data = StageChanged(
            customer_id=customer, from_stage=None, to_stage=to, rule="test", message_id=None, event_time=at
        )
        return await self.lifecycle(customer, EventType.STAGE_CHANGED, data, at, event_id=event_id)

    async def health(self, customer: str, to: Health, at: datetime) -> str:
        data = HealthChanged(customer_id=customer, from_health=None, to_health=to, rule="test", event_time=at)
        return await self.lifecycle(customer, EventType.HEALTH_CHANGED, data, at)

    async def erase(self, customer: str, at: datetime) -> str:
        return await self.lifecycle(
            customer, EventType.CUSTOMER_ERASED, CustomerErased(customer_id=customer, erased_at=at), at
        )

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        async with transaction(self.app.state.ctx.engine) as db:
            return list(await db.fetch(sql, *args))

    async def value(self, sql: str, *args: Any) -> Any:
        async with transaction(self.app.state.ctx.engine) as db:
            return await db.fetchval(sql, *args)

    async def settled(self) -> None:
        """Every record published so far handled by the two consumer loops (their transactions committed).

        Counted by the loops, not by dedup rows: a touchpoint that changes nothing leaves no row.
        """

        def handled(group: str, topic: str) -> int:
            labels = {"group": self.settings.topic_namespace + group, "topic": topic}
            return int(REGISTRY.get_sample_value("clm_consumer_records_total", labels) or 0)

        seen: list[tuple[int, int]] = []

        async def applied() -> bool:
            touchpoints = handled(TOUCHPOINTS_GROUP, self.topics.touchpoints)
            events = handled(LIFECYCLE_GROUP, self.topics.stage_changes)
            seen[:] = [(touchpoints, events)]
            return touchpoints >= self.sent_touchpoints and events >= self.sent_events

        try:
            await wait_for(applied, timeout_s=30, what="every published touchpoint and event applied by campaigns")
        except BaseException:
            print(f"applied (touchpoints, events): {seen}, published: {(self.sent_touchpoints, self.sent_events)}")
            raise

    async def delivered(self) -> None:
        """Every message due by the clock recorded as sent, failed or held (a mail can reach the sink
        a moment before its send is committed)."""

        async def none_due() -> bool:
            due = await self.value(
                "SELECT count(*) FROM messages WHERE status = 'pending' AND due_at <= $1", self.clock.now
            )
            return bool(due == 0)

        await wait_for(none_due, what="every due message recorded")

    async def messages(self, customer: str) -> list[Any]:
        return await self.fetch(
            "SELECT campaign_id, step, step_name, status, reason, variant, due_at, attempts FROM messages"
            " WHERE customer_id = $1 ORDER BY message_id",
            customer,
        )

    async def counts(self, campaign: str) -> dict[str, int]:
        rows = await self.fetch("SELECT counter, count FROM campaign_counts WHERE campaign_id = $1", campaign)
        return {r["counter"]: r["count"] for r in rows}

    def mails_to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.sink.messages() if m["To"] == address]

    async def campaign_events(self, expected: int) -> list[Any]:
        records = await read_records(self.settings.kafka_bootstrap, self.topics.campaign_events, expected)
        return [decode(r.value) for r in records]


@asynccontextmanager
async def running_campaigns(
    settings: Settings, topics: Topics, clock: FakeClock, mail_dir: Path, **overrides: Any
) -> AsyncIterator[CampaignsUnderTest]:
    """The campaigns service with a real SMTP sink; ``overrides`` change settings (e.g. the holdout share)."""
    async with MailSink(mail_dir) as sink:
        configured = settings.model_copy(
            update={"smtp_host": "127.0.0.1", "smtp_port": sink.port, "data_dir": mail_dir.parent, **overrides}
        )
        app = create_app(configured, clock=clock)
        publisher = Publisher(configured.kafka_bootstrap, client_id="campaigns-test")
        async with app.router.lifespan_context(app):
            under_test = CampaignsUnderTest(app, configured, topics, clock, sink, publisher)
            await wait_for(lambda: _ready(app), timeout_s=60, what="campaigns consumers assigned")
            try:
                yield under_test
            finally:
                await publisher.stop()


async def _ready(app: FastAPI) -> bool:
    checks = app.state.ctx.readiness
    return all([await check() for name, check in checks.items() if name.startswith("consumer:")])
