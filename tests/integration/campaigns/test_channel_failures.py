"""Failing channels in the running campaigns service: SMTP refusals and webhook errors, retried with back-off.

The service runs in-process on real Kafka and PostgreSQL with a real SMTP sink and a real HTTP receiver.
The clock is a ``FakeClock``: a retry is due at exactly ``now + base * 2**(attempts - 1)``, and the test
moves the clock there, so the back-off is checked to the microsecond rather than by timing.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import SecretStr

from campaigns.channels.webhook import verify_webhook_signature
from clm_shared.schemas.lifecycle import EventType, Stage
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from tests.utils.campaigns import CampaignsUnderTest, running_campaigns
from tests.utils.clock import FakeClock
from tests.utils.factories import touchpoint
from tests.utils.kafka import topic_size
from tests.utils.webhooks import Receiver, webhook_receiver
from tests.waiting import wait_for

T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, noon UTC: outside quiet hours
BASE = timedelta(seconds=60)  # the first retry delay; with the fake clock its size costs no time
RETRIES = {
    "campaigns_quiet_hours": "",
    "campaigns_holdout_percent": 0.0,
    "campaigns_send_attempts": 3,
    "campaigns_retry_base_s": BASE.total_seconds(),
}


def addr(customer: str) -> str:
    return f"{customer}@example.test"


def mails_for(svc: CampaignsUnderTest, customer: str) -> int:
    """How many mails the sink holds for a customer (a count: an address must never reach the test output)."""
    return len(svc.mails_to(addr(customer)))


async def message_row(svc: CampaignsUnderTest, customer: str, campaign: str) -> Any:
    rows = await svc.fetch(
        "SELECT message_id, status, attempts, due_at, last_error FROM messages"
        " WHERE customer_id = $1 AND campaign_id = $2 ORDER BY message_id",
        customer,
        campaign,
    )
    assert len(rows) == 1, f"{len(rows)} message rows for {customer} in {campaign}"
    return rows[0]


async def wait_attempts(svc: CampaignsUnderTest, customer: str, campaign: str, attempts: int, status: str) -> Any:
    """The customer's message once it has been tried ``attempts`` times and has ``status``."""
    found: list[Any] = []

    async def reached() -> bool:
        rows = await svc.fetch(
            "SELECT message_id, status, attempts, due_at, last_error FROM messages"
            " WHERE customer_id = $1 AND campaign_id = $2",
            customer,
            campaign,
        )
        found[:] = rows
        return len(rows) == 1 and rows[0]["attempts"] == attempts and rows[0]["status"] == status

    await wait_for(reached, what=f"{customer}'s {campaign} message {status} after {attempts} attempt(s)")
    return found[0]


async def outbox_drained(svc: CampaignsUnderTest) -> None:
    async def empty() -> bool:
        return bool(await svc.value("SELECT count(*) FROM outbox") == 0)

    await wait_for(empty, what="the outbox relayed")


async def enter_welcome(svc: CampaignsUnderTest, customer: str) -> None:
    """The customer is identified with an address, then enters engagement: the shipped welcome is due now."""
    await svc.touch(touchpoint(None, customer=customer, call_type="identify", at=T, traits={"email": addr(customer)}))
    await svc.settled()
    await svc.stage(customer, Stage.ENGAGEMENT, T)
    await svc.settled()


@pytest.mark.parametrize("refuse_at", ["rcpt", "data"])
async def test_a_server_that_keeps_refusing_for_now_is_retried_with_back_off_then_the_send_fails(
    settings: Settings, topics: Topics, tmp_path: Path, refuse_at: Literal["rcpt", "data"]
) -> None:
    clock = FakeClock(T)
    async with running_campaigns(settings, topics, clock, tmp_path / "mail", **RETRIES) as svc:
        svc.sink.refuse_with = 451
        svc.sink.handler.refuse_at = refuse_at
        await enter_welcome(svc, "amy")

        first = await wait_attempts(svc, "amy", "welcome", 1, "pending")
        assert first["due_at"] == T + BASE
        assert first["last_error"] == f"SMTP 451 on {refuse_at.upper()}"

        clock.now = T + BASE
        second = await wait_attempts(svc, "amy", "welcome", 2, "pending")
        assert second["due_at"] == T + BASE + 2 * BASE  # doubled

        clock.now = T + 3 * BASE
        failed = await wait_attempts(svc, "amy", "welcome", 3, "failed")  # CLM_CAMPAIGNS_SEND_ATTEMPTS=3: no 4th
        assert failed["last_error"] == f"SMTP 451 on {refuse_at.upper()}"

        await outbox_drained(svc)
        [event] = await svc.campaign_events(1)
        assert await topic_size(settings.kafka_bootstrap, topics.campaign_events) == 1  # published once
        assert (event.type, event.subject) == (EventType.CAMPAIGN_FAILED, "amy")
        assert event.data["campaign_id"] == "welcome"
        assert event.data["message_id"] == failed["message_id"]
        assert event.data["attempts"] == 3
        assert event.data["error"] == f"SMTP 451 on {refuse_at.upper()}"
        assert event.data["channel"] == "email"
        counts = await svc.counts("welcome")
        assert counts.get("failed") == 1 and "sent" not in counts
        assert svc.sink.messages() == []


async def test_a_server_that_refuses_twice_then_accepts_gets_the_mail_once_on_the_third_try(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    clock = FakeClock(T)
    async with running_campaigns(settings, topics, clock, tmp_path / "mail", **RETRIES) as svc:
        svc.sink.refuse_with = 451
        await enter_welcome(svc, "ben")
        await wait_attempts(svc, "ben", "welcome", 1, "pending")
        clock.now = T + BASE
        second = await wait_attempts(svc, "ben", "welcome", 2, "pending")
        assert svc.sink.messages() == []

        svc.sink.refuse_with = None
        clock.now = second["due_at"]
        sent = await wait_attempts(svc, "ben", "welcome", 3, "sent")
        assert sent["last_error"] is None
        assert mails_for(svc, "ben") == 1
        assert [m["Message-ID"] for m in svc.sink.messages()] == [f"<clm-{sent['message_id']}@clm>"]

        await outbox_drained(svc)
        [event] = await svc.campaign_events(1)
        assert await topic_size(settings.kafka_bootstrap, topics.campaign_events) == 1
        assert (event.type, event.subject, event.data["message_id"]) == (
            EventType.CAMPAIGN_SENT,
            "ben",
            sent["message_id"],
        )
        counts = await svc.counts("welcome")
        assert counts.get("sent") == 1 and "failed" not in counts
        assert mails_for(svc, "ben") == 1  # nothing was sent after the row was marked


@pytest.mark.parametrize(("code", "refuse_at"), [(550, "rcpt"), (554, "data")])
async def test_a_permanent_refusal_fails_the_send_after_one_attempt(
    settings: Settings, topics: Topics, tmp_path: Path, code: int, refuse_at: Literal["rcpt", "data"]
) -> None:
    clock = FakeClock(T)
    async with running_campaigns(settings, topics, clock, tmp_path / "mail", **RETRIES) as svc:
        svc.sink.refuse_with = code
        svc.sink.handler.refuse_at = refuse_at
        await enter_welcome(svc, "cid")
        failed = await wait_attempts(svc, "cid", "welcome", 1, "failed")
        assert failed["last_error"] == f"SMTP {code} on {refuse_at.upper()}"
        assert failed["due_at"] == T  # not rescheduled

        await outbox_drained(svc)
        [event] = await svc.campaign_events(1)
        assert await topic_size(settings.kafka_bootstrap, topics.campaign_events) == 1
        assert (event.type, event.data["attempts"]) == (EventType.CAMPAIGN_FAILED, 1)
        assert (await svc.counts("welcome")).get("failed") == 1
        assert svc.sink.messages() == []
        # a refused address is a hard bounce: no campaign mails it again; refused content is not
        reason = await svc.value("SELECT reason FROM suppressions WHERE customer_id = 'cid'")
        assert reason == ("hard_bounce" if refuse_at == "rcpt" else None)


def email_campaign(folder: Path, campaign_id: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    definition = {
        "id": campaign_id,
        "name": campaign_id,
        "trigger": {"event": "Promo Viewed"},
        "quiet_hours": False,
        "holdout_percent": 0,
        "steps": [
            {"type": "send", "name": "promo", "template": {"subject": "Promo", "html": "<p>Hi</p>", "text": text}}
        ],
    }
    (folder / f"{campaign_id}.yaml").write_text(json.dumps(definition), encoding="utf-8")


@pytest.mark.parametrize("broken", ["{{ 1 / 0 }}", "{{ customer.id.nope() }}"])
async def test_a_template_that_cannot_render_fails_its_own_send_and_no_other(
    settings: Settings, topics: Topics, tmp_path: Path, broken: str
) -> None:
    """Both sends are due in one delivery round: the broken one fails for good, the other goes out once."""
    folder = tmp_path / "campaigns"
    email_campaign(folder, "promo-good", "Hi {{ customer.id }}")
    email_campaign(folder, "promo-broken", broken)
    clock = FakeClock(T)
    async with running_campaigns(settings, topics, clock, tmp_path / "mail", campaigns_dir=folder, **RETRIES) as svc:
        identify = touchpoint(None, customer="gil", call_type="identify", at=T, traits={"email": addr("gil")})
        await svc.touch(identify, touchpoint("Promo Viewed", customer="gil", at=T))
        await svc.settled()
        failed = await wait_attempts(svc, "gil", "promo-broken", 1, "failed")
        assert failed["last_error"].startswith("text: ")
        await wait_attempts(svc, "gil", "promo-good", 1, "sent")
        await outbox_drained(svc)
        events = await svc.campaign_events(2)
        assert await topic_size(settings.kafka_bootstrap, topics.campaign_events) == 2
        assert sorted((e.type, e.data["campaign_id"]) for e in events) == [
            (EventType.CAMPAIGN_FAILED, "promo-broken"),
            (EventType.CAMPAIGN_SENT, "promo-good"),
        ]
        assert mails_for(svc, "gil") == 1
        assert (await svc.counts("promo-broken")).get("failed") == 1


async def test_recommendation_emails_due_in_one_round_each_go_out_once(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    """Each one queries purchases while the round sends the others: the round must not trip over itself."""
    customers = [f"rec{n}" for n in range(6)]
    async with running_campaigns(settings, topics, FakeClock(T), tmp_path / "mail", **RETRIES) as svc:
        for customer in customers:
            await svc.touch(
                touchpoint(None, customer=customer, call_type="identify", at=T, traits={"email": addr(customer)}),
                touchpoint("Order Completed", customer=customer, at=T, products=[{"product_id": f"p-{customer}"}]),
            )
        await svc.settled()
        for customer in customers:
            await svc.stage(customer, Stage.RETENTION, T)
        await svc.settled()

        async def all_sent() -> bool:
            sql = "SELECT count(*) FROM messages WHERE campaign_id = 'recommendations' AND status = 'sent'"
            return bool(await svc.value(sql) == len(customers))

        await wait_for(all_sent, what="every recommendations email sent")
        assert [mails_for(svc, customer) for customer in customers] == [1] * len(customers)
        for mail in svc.sink.messages():
            text = mail.get_body(("plain",))
            assert text is not None and "p-rec" in text.get_content()  # the others' purchases, recommended


# --- webhooks -------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver("/hooks/leads?token=t0k3n") as state:
        yield state


def webhook_campaign(folder: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    definition = {
        "id": "lead-hook",
        "name": "Lead to CRM",
        "trigger": {"event": "Lead Scored"},
        "quiet_hours": False,
        "holdout_percent": 0,
        "steps": [{"type": "send", "name": "to-crm", "channel": "webhook", "url": url}],
    }
    # JSON is YAML: no quoting questions about the URL
    (folder / "lead-hook.yaml").write_text(json.dumps(definition), encoding="utf-8")
    return folder


async def score_lead(svc: CampaignsUnderTest, customer: str, score: int) -> None:
    await svc.touch(touchpoint(None, customer=customer, call_type="identify", at=T, traits={"plan": "pro"}))
    await svc.touch(touchpoint("Lead Scored", customer=customer, at=T, score=score, source="form"))
    await svc.settled()


def assert_signed(key: str, headers: dict[str, str], body: bytes) -> None:
    timestamp, signature = headers["x-clm-timestamp"], headers["x-clm-signature"]
    assert verify_webhook_signature(key, timestamp, body, signature, now=time.time())
    assert not verify_webhook_signature(key + "x", timestamp, body, signature, now=time.time())


async def test_a_webhook_step_posts_the_signed_event_once(
    settings: Settings, topics: Topics, tmp_path: Path, receiver: Receiver
) -> None:
    key = secrets.token_urlsafe(24)  # remembered by the secret watch: it must not reach any output
    clock = FakeClock(T)
    folder = webhook_campaign(tmp_path / "campaigns", receiver.url)
    async with running_campaigns(
        settings, topics, clock, tmp_path / "mail", campaigns_dir=folder, webhook_secret=SecretStr(key), **RETRIES
    ) as svc:
        await score_lead(svc, "dee", 87)
        sent = await wait_attempts(svc, "dee", "lead-hook", 1, "sent")
        await outbox_drained(svc)
        assert receiver.count() == 1

        [(headers, body, status)] = receiver.requests
        assert status == 200
        assert_signed(key, headers, body)
        assert headers["x-clm-delivery-id"] == f"clm-{sent['message_id']}"
        payload = json.loads(body)
        assert payload["customer_id"] == "dee"
        assert payload["campaign"] == {"id": "lead-hook", "name": "Lead to CRM"}
        assert payload["step"] == "to-crm"
        assert payload["event"]["name"] == "Lead Scored"
        assert payload["event"]["properties"] == {"score": 87, "source": "form"}
        assert datetime.fromisoformat(payload["event"]["time"]) == T
        assert payload["traits"] == {"plan": "pro"}

        [event] = await svc.campaign_events(1)
        assert (event.type, event.data["channel"]) == (EventType.CAMPAIGN_SENT, "webhook")
        assert receiver.count() == 1
        assert svc.sink.messages() == []  # a webhook step sends no mail


async def test_a_receiver_failing_twice_gets_the_delivery_on_the_third_attempt_once(
    settings: Settings, topics: Topics, tmp_path: Path, receiver: Receiver
) -> None:
    key = secrets.token_urlsafe(24)
    receiver.answers = [500, 500]
    clock = FakeClock(T)
    folder = webhook_campaign(tmp_path / "campaigns", receiver.url)
    async with running_campaigns(
        settings, topics, clock, tmp_path / "mail", campaigns_dir=folder, webhook_secret=SecretStr(key), **RETRIES
    ) as svc:
        await score_lead(svc, "eli", 12)
        first = await wait_attempts(svc, "eli", "lead-hook", 1, "pending")
        assert first["last_error"] == "webhook answered HTTP 500"
        assert first["due_at"] == T + BASE
        clock.now = first["due_at"]
        second = await wait_attempts(svc, "eli", "lead-hook", 2, "pending")
        assert second["due_at"] == T + 3 * BASE
        assert receiver.count() == 2
        clock.now = second["due_at"]
        await wait_attempts(svc, "eli", "lead-hook", 3, "sent")
        await outbox_drained(svc)

        assert [status for _, _, status in receiver.requests] == [500, 500, 200]
        for headers, body, _ in receiver.requests:
            assert_signed(key, headers, body)
        # one delivery: the same id on every try, so a receiver can drop a repeat
        assert len({headers["x-clm-delivery-id"] for headers, _, _ in receiver.requests}) == 1
        assert len({body for _, body, _ in receiver.requests}) == 1
        [event] = await svc.campaign_events(1)
        assert await topic_size(settings.kafka_bootstrap, topics.campaign_events) == 1
        assert event.type == EventType.CAMPAIGN_SENT
        assert (await svc.counts("lead-hook")).get("sent") == 1
        assert receiver.count() == 3


async def test_a_receiver_refusing_for_good_fails_the_send_at_once(
    settings: Settings, topics: Topics, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [410]
    clock = FakeClock(T)
    folder = webhook_campaign(tmp_path / "campaigns", receiver.url)
    async with running_campaigns(settings, topics, clock, tmp_path / "mail", campaigns_dir=folder, **RETRIES) as svc:
        await score_lead(svc, "fay", 3)
        failed = await wait_attempts(svc, "fay", "lead-hook", 1, "failed")
        assert failed["last_error"] == "webhook answered HTTP 410"
        await outbox_drained(svc)
        [event] = await svc.campaign_events(1)
        assert (event.type, event.data["attempts"]) == (EventType.CAMPAIGN_FAILED, 1)
        assert "t0k3n" not in event.data["error"]  # the URL's token stays out of the event
        assert receiver.count() == 1
