"""Every shipped campaign, end to end: Segment calls into ingest, stages from the engine, mail over SMTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from campaigns.signing import signer_for
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from ingest.app import create_app as create_ingest
from ingest.keys import create_key
from stage_engine.app import create_app as create_engine_app
from tests.utils.campaigns import CampaignsUnderTest, running_campaigns
from tests.utils.clock import FakeClock
from tests.waiting import wait_for

T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def addr(customer: str) -> str:
    return f"{customer}@example.test"


def call(kind: str, customer: str, at: datetime, event: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": kind,
        "userId": customer,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        **fields,
    }
    if event is not None:
        body["event"] = event
    return body


def identify(customer: str, at: datetime, first_name: str) -> dict[str, Any]:
    return call("identify", customer, at, traits={"email": addr(customer), "first_name": first_name})


def order(customer: str, at: datetime, *products: str) -> dict[str, Any]:
    items = [{"product_id": p, "name": p.title(), "quantity": 1} for p in products]
    return call("track", customer, at, "Order Completed", properties={"revenue": 30, "products": items})


@asynccontextmanager
async def shop(settings: Settings, topics: Topics, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    engine_clock = FakeClock(T)
    ingest_app, engine_app = create_ingest(settings), create_engine_app(settings, clock=engine_clock)
    async with (
        ingest_app.router.lifespan_context(ingest_app),
        engine_app.router.lifespan_context(engine_app),
        running_campaigns(
            settings, topics, FakeClock(T), tmp_path / "mail", campaigns_quiet_hours="", campaigns_holdout_percent=0.0
        ) as svc,
    ):
        key = await create_key(ingest_app.state.ctx.engine, name=f"shop-{uuid.uuid4().hex[:6]}")
        transport = httpx.ASGITransport(app=ingest_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://i", auth=(key, "")) as ingest:
            yield ingest, (svc, engine_clock)


def text_of(mail: EmailMessage) -> str:
    part = mail.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def mails(svc: CampaignsUnderTest, customer: str, count: int) -> list[EmailMessage]:
    await wait_for(
        lambda: len(svc.mails_to(addr(customer))) >= count, timeout_s=60, what=f"{count} mails to {customer}"
    )
    return svc.mails_to(addr(customer))


@pytest.mark.timeout(240)
async def test_each_shipped_campaign_reaches_the_right_customer_with_the_right_content(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    t = T - timedelta(minutes=30)
    m = timedelta(minutes=1)
    batch = [
        identify("wendy", t, "Wendy"),
        call("track", "wendy", t + m, "Signed Up"),
        # peers who bought mugs also bought spoons: what ria is recommended
        identify("peer", t, "Peer"),
        order("peer", t + m, "mug", "spoon"),
        identify("ria", t, "Ria"),
        order("ria", t + m, "mug"),
        order("ria", t + 2 * m, "tea"),
        identify("leo", t, "Leo"),
        order("leo", t + m, "tea"),
        order("leo", t + 2 * m, "tea"),
        call("track", "leo", t + 3 * m, "Loyalty Program Joined"),
        identify("ada", t, "Ada"),
        order("ada", t + m, "tea"),
        order("ada", t + 2 * m, "tea"),
        call("track", "ada", t + 3 * m, "Referral Sent"),
        identify("cal", t, "Cal"),
        call("track", "cal", t + m, "Checkout Started", properties={"checkout_id": "k1", "total": 99}),
        identify("sam", t, "Sam"),
        order("sam", t + m, "tea"),
        call("track", "sam", t + 2 * m, "Subscription Cancelled"),
    ]
    async with shop(settings, topics, tmp_path) as (ingest, (svc, engine_clock)):
        answer = await ingest.post("/v1/batch", content=orjson.dumps({"batch": batch}))
        assert answer.status_code == 200, answer.text

        welcome = (await mails(svc, "wendy", 1))[0]
        assert "Wendy" in text_of(welcome) and "Welcome" in str(welcome["Subject"])

        ria = await mails(svc, "ria", 2)
        assert len({m["Subject"] for m in ria}) == 2
        recommendation = next(m for m in ria if "Spoon" in text_of(m))
        assert "Mug" not in text_of(recommendation) and "Tea" not in text_of(recommendation)

        leo = await mails(svc, "leo", 3)
        assert any("loyalty" in text_of(m).lower() for m in leo)

        ada = await mails(svc, "ada", 3)
        referral = next(m for m in ada if "referral" in text_of(m).lower())
        assert signer_for(svc.settings).referral_code("ada") in text_of(referral)

        sam = await mails(svc, "sam", 2)
        assert {r["campaign_id"] for r in await svc.messages("sam")} == {"post-purchase", "win-back"}
        assert any("WELCOMEBACK15" in text_of(m) for m in sam)

        # the cart reminder an hour after checkout, then post-purchase's feedback request a week later
        svc.clock.now = T + timedelta(hours=1)
        cart = (await mails(svc, "cal", 1))[0]
        assert "k1" in text_of(cart) or "cart" in text_of(cart).lower()
        svc.clock.now = T + timedelta(days=7, hours=1)
        feedback = await mails(svc, "sam", 3)
        assert {r["step_name"] for r in await svc.messages("sam")} >= {"thank-you", "feedback-request"}
        assert "feedback" in text_of(feedback[-1]).lower() or "think" in text_of(feedback[-1]).lower()

        # two months without activity: the engine finds ria at risk, and the nudge follows
        engine_clock.now = T + timedelta(days=60, hours=2)
        svc.clock.now = T + timedelta(days=60, hours=3)
        await wait_for(
            lambda: _has(svc, "ria", "at-risk-nudge"), timeout_s=60, what="ria's at-risk nudge after 60 quiet days"
        )
        # nobody got what was meant for someone else
        for customer, campaigns in {
            "wendy": {"welcome"},
            "cal": {"abandoned-cart"},
            "peer": {"post-purchase", "recommendations", "at-risk-nudge"},
        }.items():
            assert {r["campaign_id"] for r in await svc.messages(customer)} <= campaigns, customer


async def _has(svc: CampaignsUnderTest, customer: str, campaign: str) -> bool:
    return any(r["campaign_id"] == campaign for r in await svc.messages(customer))
