"""The campaigns service on real Kafka, PostgreSQL and SMTP: who gets what, when, once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from campaigns.definitions import Campaign, SendStep
from campaigns.guardrails import assign_variant, in_holdout
from campaigns.registry import get, save, set_status
from clm_shared.kafka.admin import ensure_topics
from clm_shared.schemas.lifecycle import EventType, Health, Stage
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from clm_shared.transactions import transaction
from tests.conftest import drop_schemas
from tests.utils.campaigns import CampaignsUnderTest, running_campaigns
from tests.utils.clock import FakeClock
from tests.utils.factories import touchpoint
from tests.waiting import wait_for

T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, noon UTC: outside quiet hours
QUIET_OFF = {"campaigns_quiet_hours": "", "campaigns_holdout_percent": 0.0}


def addr(customer: str) -> str:
    return f"{customer}@example.test"


def identify(customer: str, at: datetime, **traits: object) -> Touchpoint:
    return touchpoint(None, customer=customer, call_type="identify", at=at, traits={"email": addr(customer), **traits})


@pytest.fixture
async def svc(settings: Settings, topics: Topics, tmp_path: Path) -> AsyncIterator[CampaignsUnderTest]:
    async with running_campaigns(settings, topics, FakeClock(T), tmp_path / "mail", **QUIET_OFF) as svc:
        yield svc


async def sent_count(svc: CampaignsUnderTest, customer: str, status: str = "sent") -> int:
    return int(
        await svc.value("SELECT count(*) FROM messages WHERE customer_id = $1 AND status = $2", customer, status)
    )


async def test_welcome_reaches_the_customer_once_with_their_name_and_an_unsubscribe_link(
    svc: CampaignsUnderTest,
) -> None:
    await svc.touch(identify("ann", T - timedelta(minutes=5), first_name="Ann <b>&"))
    await svc.settled()
    first = await svc.stage("ann", Stage.ENGAGEMENT, T - timedelta(minutes=1))
    # the same event delivered twice, and the stage reported again under another id (a replay upstream)
    await svc.stage("ann", Stage.ENGAGEMENT, T - timedelta(minutes=1), event_id=first)
    await svc.stage("ann", Stage.ENGAGEMENT, T - timedelta(minutes=1))
    await svc.settled()
    await wait_for(lambda: len(svc.mails_to(addr("ann"))) >= 1, what="the welcome email")
    mail = svc.mails_to(addr("ann"))[0]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/v1/unsubscribe/" in mail["List-Unsubscribe"]
    html = mail.get_body(("html",))
    text = mail.get_body(("plain",))
    assert html is not None and text is not None
    assert "Ann &lt;b&gt;&amp;" in html.get_content()
    assert "Ann <b>&" in text.get_content()
    events = await svc.campaign_events(1)
    assert [(e.type, e.data["campaign_id"], e.subject) for e in events] == [(EventType.CAMPAIGN_SENT, "welcome", "ann")]
    assert len(svc.mails_to(addr("ann"))) == 1
    assert await svc.counts("welcome") == {"entered": 1, "completed": 1, "sent": 1}


async def test_abandoned_cart_fires_without_an_order_and_exits_when_the_order_arrives(
    svc: CampaignsUnderTest,
) -> None:
    start = T - timedelta(minutes=2)
    await svc.touch(identify("bob", start), identify("cat", start), identify("dan", start))
    for customer in ("bob", "cat", "dan"):
        await svc.touch(touchpoint("Checkout Started", customer=customer, at=start, checkout_id=f"k-{customer}"))
    # dan orders within the hour: his run ends before any reminder
    await svc.touch(touchpoint("Order Completed", customer="dan", at=start + timedelta(minutes=1), checkout_id="k-dan"))
    await svc.settled()
    assert await svc.value("SELECT status FROM runs WHERE customer_id = 'dan'") == "exited"

    svc.clock.now = start + timedelta(hours=1, seconds=1)
    await wait_for(
        lambda: len(svc.mails_to(addr("bob"))) == 1 and len(svc.mails_to(addr("cat"))) == 1, what="reminders"
    )
    # cat orders after the first reminder: no second one, and the order is the campaign's conversion
    await svc.touch(
        touchpoint("Order Completed", customer="cat", at=start + timedelta(hours=2), checkout_id="k-cat", revenue=42.0)
    )
    await svc.settled()
    svc.clock.now = start + timedelta(hours=25, seconds=2)
    await wait_for(lambda: len(svc.mails_to(addr("bob"))) == 2, what="bob's second reminder")
    assert len(svc.mails_to(addr("cat"))) == 1 and svc.mails_to(addr("dan")) == []
    variant = assign_variant("bob", "abandoned-cart", {"A": 50, "B": 50})
    second = svc.mails_to(addr("bob"))[1]
    body = second.get_body(("plain",))
    assert body is not None
    assert ("COMEBACK10" in body.get_content()) == (variant == "B")
    await svc.delivered()
    rows = await svc.messages("bob")
    assert [(r["step_name"], r["status"], r["variant"]) for r in rows] == [
        ("reminder", "sent", variant),
        ("second-reminder", "sent", variant),
    ]
    events = await svc.campaign_events(4)
    assert sorted((e.type, e.subject) for e in events) == [
        (EventType.CAMPAIGN_CONVERTED, "cat"),
        (EventType.CAMPAIGN_SENT, "bob"),
        (EventType.CAMPAIGN_SENT, "bob"),
        (EventType.CAMPAIGN_SENT, "cat"),
    ]
    counts = await svc.counts("abandoned-cart")
    assert counts["entered"] == 3 and counts["exited"] == 2 and counts["converted"] == 1 and counts["sent"] == 3
    assert counts["treatment_converted"] == 2  # dan and cat ordered within a week of entering; only cat after a send


async def test_the_frequency_cap_holds_the_fourth_message_in_a_week_and_says_so(svc: CampaignsUnderTest) -> None:
    at = T - timedelta(minutes=1)
    await svc.touch(identify("eve", at - timedelta(minutes=1)))
    await svc.settled()
    for stage in (Stage.ENGAGEMENT, Stage.CONVERSION, Stage.RETENTION, Stage.LOYALTY):
        await svc.stage("eve", stage, at)
    await svc.settled()
    await wait_for(lambda: len(svc.mails_to(addr("eve"))) == 3, what="three messages")
    await svc.delivered()
    rows = await svc.messages("eve")
    assert [(r["campaign_id"], r["status"], r["reason"]) for r in rows] == [
        ("welcome", "sent", None),
        ("post-purchase", "sent", None),
        ("recommendations", "sent", None),
        ("loyalty-invite", "held", "capped"),
    ]
    assert (await svc.counts("loyalty-invite"))["held:capped"] == 1


async def test_stale_triggers_suppressed_customers_and_paused_campaigns_send_nothing(svc: CampaignsUnderTest) -> None:
    await svc.touch(identify("old", T - timedelta(days=3)), identify("gus", T), identify("hal", T))
    await svc.touch(touchpoint("Unsubscribed", customer="gus", at=T))
    await svc.settled()
    async with transaction(svc.app.state.ctx.engine) as db:
        assert await set_status(db, "loyalty-invite", "paused", now=T)
    await svc.stage("old", Stage.ENGAGEMENT, T - timedelta(days=2))  # a replayed, two-day-old stage change
    await svc.stage("gus", Stage.ENGAGEMENT, T)
    await svc.stage("hal", Stage.LOYALTY, T)
    await svc.settled()
    await wait_for(lambda: _status_is(svc, "gus", "held"), what="gus held back")
    assert [(r["status"], r["reason"]) for r in await svc.messages("old")] == [("held", "stale")]
    assert [(r["status"], r["reason"]) for r in await svc.messages("gus")] == [("held", "suppressed")]
    assert [(r["status"], r["reason"]) for r in await svc.messages("hal")] == [("held", "paused")]
    assert svc.sink.messages() == []


async def _status_is(svc: CampaignsUnderTest, customer: str, status: str) -> bool:
    rows = await svc.messages(customer)
    return bool(rows) and all(r["status"] == status for r in rows)


async def test_an_erased_customer_leaves_only_anonymous_counts(svc: CampaignsUnderTest) -> None:
    # before signing up, as an anonymous visitor: a newsletter address and a cart, kept under the anonymous id
    anonymous = touchpoint(None, customer="anon-ivy", call_type="identify", at=T, traits={"email": addr("anon-ivy")})
    await svc.touch(anonymous, touchpoint("Checkout Started", customer="anon-ivy", at=T, checkout_id="k"))
    await svc.touch(
        touchpoint(
            None, customer="ivy", call_type="identify", at=T, anonymous_id="anon-ivy", traits={"email": addr("ivy")}
        )
    )
    await svc.touch(touchpoint("Order Completed", customer="ivy", at=T, products=[{"product_id": "p1"}]))
    await svc.settled()
    await svc.stage("ivy", Stage.ENGAGEMENT, T)
    await svc.settled()
    await wait_for(lambda: len(svc.mails_to(addr("ivy"))) == 1, what="the welcome email")
    await svc.erase("ivy", T)
    await svc.settled()
    for table, column in [
        ("runs", "customer_id"),
        ("messages", "customer_id"),
        ("profiles", "customer_id"),
        ("purchases", "customer_id"),
        ("identities", "alias_id"),
        ("last_sequences", "subject"),
    ]:
        left = await svc.value(f"SELECT count(*) FROM {table} WHERE {column} IN ('ivy', 'anon-ivy')")
        assert left == 0, table
    assert await svc.value("SELECT count(*) FROM timers") == 0
    assert (await svc.counts("welcome"))["sent"] == 1


async def test_health_triggers_at_risk_and_win_back(svc: CampaignsUnderTest) -> None:
    await svc.touch(identify("jo", T, first_name="Jo"))
    await svc.settled()
    await svc.health("jo", Health.AT_RISK, T - timedelta(seconds=2))
    await svc.health("jo", Health.CHURNED, T - timedelta(seconds=1))
    await svc.settled()
    await wait_for(lambda: len(svc.mails_to(addr("jo"))) == 2, what="nudge and win-back")
    assert [r["campaign_id"] for r in await svc.messages("jo")] == ["at-risk-nudge", "win-back"]


async def test_quiet_hours_move_a_send_to_the_morning_in_the_customers_timezone(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    evening = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)  # 23:30 in Berlin, 17:30 in New York
    clock = FakeClock(evening)
    async with running_campaigns(settings, topics, clock, tmp_path / "mail", campaigns_holdout_percent=0.0) as svc:
        await svc.touch(
            identify("kim", evening, timezone="Europe/Berlin"), identify("lee", evening, timezone="America/New_York")
        )
        await svc.settled()
        await svc.stage("kim", Stage.ENGAGEMENT, evening)
        await svc.stage("lee", Stage.ENGAGEMENT, evening)
        await svc.settled()
        await wait_for(lambda: len(svc.mails_to(addr("lee"))) == 1, what="lee's welcome (not quiet in New York)")
        rows = await svc.messages("kim")
        assert [(r["status"], r["reason"], r["due_at"]) for r in rows] == [
            ("pending", "quiet_hours", datetime(2026, 3, 3, 7, 0, tzinfo=UTC))  # 08:00 in Berlin
        ]
        assert svc.mails_to(addr("kim")) == []
        clock.now = datetime(2026, 3, 3, 7, 0, 1, tzinfo=UTC)
        await wait_for(lambda: len(svc.mails_to(addr("kim"))) == 1, what="kim's welcome in the morning")


async def test_holdout_and_ab_groups_are_the_deterministic_ones(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    clock = FakeClock(T)
    customers = [f"h{i:03d}" for i in range(120)]
    async with running_campaigns(
        settings, topics, clock, tmp_path / "mail", campaigns_quiet_hours="", campaigns_holdout_percent=25.0
    ) as svc:
        for customer in customers:
            await svc.touch(touchpoint("Checkout Started", customer=customer, at=T, checkout_id="k"))
        await svc.settled()
        expected_holdout = {c for c in customers if in_holdout(c, "abandoned-cart", 25.0)}
        rows = await svc.fetch("SELECT customer_id, holdout FROM runs WHERE campaign_id = 'abandoned-cart'")
        assert {r["customer_id"] for r in rows if r["holdout"]} == expected_holdout
        assert 15 <= len(expected_holdout) <= 45
        clock.now = T + timedelta(hours=1, seconds=1)
        treated = len(customers) - len(expected_holdout)
        await wait_for(
            lambda: _count_is(svc, "SELECT count(*) FROM runs WHERE variant IS NOT NULL", treated),
            what="every treated run split",
        )
        variants = await svc.fetch("SELECT customer_id, variant FROM runs WHERE variant IS NOT NULL")
        assert all(
            r["variant"] == assign_variant(r["customer_id"], "abandoned-cart", {"A": 50, "B": 50}) for r in variants
        )
        # no address: recorded, not lost, not sent
        assert await _count_is(svc, "SELECT count(*) FROM messages WHERE reason = 'holdout'", len(expected_holdout))


async def _count_is(svc: CampaignsUnderTest, sql: str, expected: int) -> bool:
    return bool(await svc.value(sql) == expected)


async def test_the_one_click_unsubscribe_link_suppresses_every_later_campaign(svc: CampaignsUnderTest) -> None:
    await svc.touch(identify("uma", T - timedelta(minutes=5)))
    await svc.settled()
    await svc.stage("uma", Stage.ENGAGEMENT, T - timedelta(minutes=1))
    await svc.settled()
    await wait_for(lambda: len(svc.mails_to(addr("uma"))) == 1, what="the welcome email")
    link = svc.mails_to(addr("uma"))[0]["List-Unsubscribe"].strip("<>")
    path = link.removeprefix(svc.settings.campaigns_public_url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app), base_url="http://c") as client:
        page = await client.get(path)  # a mail scanner fetching the link changes nothing
        assert page.status_code == 200 and "<form" in page.text
        assert await svc.value("SELECT count(*) FROM suppressions") == 0
        tampered = await client.post(path[:-2] + ("AA" if not path.endswith("AA") else "BB"))
        assert tampered.status_code == 400 and "uma" not in tampered.text
        done = await client.post(path, content=b"List-Unsubscribe=One-Click")
        assert done.status_code == 200, done.text
    assert await svc.value("SELECT reason FROM suppressions WHERE customer_id = 'uma'") == "unsubscribed"
    await svc.stage("uma", Stage.CONVERSION, T)
    await svc.settled()
    await wait_for(lambda: _status_is_last(svc, "uma", "held"), what="the next campaign held back")
    assert [(r["campaign_id"], r["status"], r["reason"]) for r in await svc.messages("uma")] == [
        ("welcome", "sent", None),
        ("post-purchase", "held", "suppressed"),
    ]
    assert len(svc.mails_to(addr("uma"))) == 1


async def _status_is_last(svc: CampaignsUnderTest, customer: str, status: str) -> bool:
    rows = await svc.messages(customer)
    return bool(rows) and rows[-1]["status"] == status


async def test_a_run_finishes_the_version_it_started_while_new_runs_take_the_new_one(svc: CampaignsUnderTest) -> None:
    start = T - timedelta(minutes=2)
    await svc.touch(identify("vic", start), identify("wes", start))
    await svc.touch(touchpoint("Checkout Started", customer="vic", at=start, checkout_id="k1"))
    await svc.settled()
    async with transaction(svc.app.state.ctx.engine) as db:
        current = await get(db, "abandoned-cart")
        assert current is not None and current.version == 1
        steps = list(current.campaign.steps)
        reminder = steps[2]
        assert isinstance(reminder, SendStep) and reminder.template is not None
        changed_template = reminder.template.model_copy(update={"subject": "Version two: still thinking?"})
        steps[2] = reminder.model_copy(update={"template": changed_template})
        saved = await save(db, current.campaign.model_copy(update={"steps": steps}), origin="api", now=T)
        assert saved.version == 2
    await svc.touch(touchpoint("Checkout Started", customer="wes", at=start, checkout_id="k2"))
    await svc.settled()
    svc.clock.now = start + timedelta(hours=1, seconds=1)
    await wait_for(lambda: len(svc.mails_to(addr("vic"))) == 1 and len(svc.mails_to(addr("wes"))) == 1, what="both")
    assert svc.mails_to(addr("vic"))[0]["Subject"] != "Version two: still thinking?"
    assert svc.mails_to(addr("wes"))[0]["Subject"] == "Version two: still thinking?"
    versions = await svc.fetch("SELECT customer_id, version FROM runs ORDER BY customer_id")
    assert [(r["customer_id"], r["version"]) for r in versions] == [("vic", 1), ("wes", 2)]


def _quiz(version_steps: list[dict[str, object]]) -> Campaign:
    send = {
        "type": "send",
        "name": "result",
        "template": {"subject": "Your quiz", "html": "<p>Thanks</p>", "text": "Thanks"},
    }
    return Campaign.model_validate(
        {"id": "quiz", "name": "Quiz", "trigger": {"event": "Quiz Started"}, "steps": [*version_steps, send]}
    )


async def test_events_only_an_old_version_or_a_new_campaign_reacts_to_still_reach_their_runs(
    svc: CampaignsUnderTest,
) -> None:
    """The touchpoint consumer skips events no campaign reacts to: it must still see every version's events."""
    start = T - timedelta(minutes=2)
    await svc.touch(
        identify("yan", start), identify("zoe", start), touchpoint("Product Viewed", customer="yan", at=start)
    )
    await svc.settled()  # the consumer knows the shipped campaigns' events now, and not the quiz's
    wait: dict[str, object] = {
        "type": "wait_for_event",
        "event": "Quiz Finished",
        "timeout": "2h",
        "on_event": "continue",
    }
    async with transaction(svc.app.state.ctx.engine) as db:
        assert (await save(db, _quiz([wait]), origin="api", now=T)).version == 1
    await svc.touch(touchpoint("Quiz Started", customer="yan", at=start))
    await svc.settled()
    # version 2 no longer waits: only yan's run of version 1 reacts to "Quiz Finished"
    async with transaction(svc.app.state.ctx.engine) as db:
        assert (await save(db, _quiz([]), origin="api", now=T)).version == 2
    await svc.touch(touchpoint("Quiz Finished", customer="yan", at=start + timedelta(minutes=1)))
    await svc.touch(touchpoint("Quiz Started", customer="zoe", at=start + timedelta(minutes=1)))
    await wait_for(
        lambda: len(svc.mails_to(addr("yan"))) == 1 and len(svc.mails_to(addr("zoe"))) == 1, what="both quiz mails"
    )
    versions = await svc.fetch("SELECT customer_id, version, status FROM runs WHERE campaign_id = 'quiz' ORDER BY 1")
    assert [tuple(r) for r in versions] == [("yan", 1, "done"), ("zoe", 2, "done")]


async def test_replaying_the_topics_later_messages_nobody_about_the_past(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    async def shop(svc: CampaignsUnderTest) -> None:
        await svc.touch(identify("xia", T - timedelta(minutes=5)))
        await svc.touch(touchpoint("Checkout Started", customer="xia", at=T - timedelta(minutes=5), checkout_id="k"))
        await svc.settled()
        await svc.stage("xia", Stage.ENGAGEMENT, T - timedelta(minutes=1), event_id="the-stage-change")
        await svc.settled()

    async with running_campaigns(settings, topics, FakeClock(T), tmp_path / "mail", **QUIET_OFF) as live:
        await shop(live)
        await wait_for(lambda: len(live.mails_to(addr("xia"))) == 1, what="the live welcome")
    # the same history again (same event times) into a fresh deployment, two days later: a backfill
    namespace = settings.topic_namespace + "replay_"
    fresh = settings.model_copy(update={"topic_namespace": namespace, "schema_namespace": namespace})
    fresh_topics = Topics(namespace)
    await ensure_topics(settings.kafka_bootstrap, {name: 2 for name in fresh_topics.all()})
    try:
        async with running_campaigns(
            fresh, fresh_topics, FakeClock(T + timedelta(days=2)), tmp_path / "replay-mail", **QUIET_OFF
        ) as replay:
            await shop(replay)
            held = await replay.fetch("SELECT campaign_id, status, reason FROM messages ORDER BY campaign_id")
            assert [(r["campaign_id"], r["status"], r["reason"]) for r in held] == [
                ("abandoned-cart", "held", "stale"),
                ("welcome", "held", "stale"),
            ]
            assert replay.sink.messages() == []
    finally:
        await drop_schemas(settings.database_url, namespace)


async def test_touchpoints_that_change_nothing_leave_no_dedup_row_and_a_repeated_order_counts_once(
    svc: CampaignsUnderTest,
) -> None:
    ignored = [touchpoint("Product Viewed", customer="zed", at=T), touchpoint("Home", customer="zed", call_type="page")]
    order = touchpoint("Order Completed", customer="zed", at=T, products=[{"product_id": "p1", "quantity": 2}])
    profile = identify("zed", T)
    await svc.touch(*ignored, order, profile)
    await svc.touch(*ignored, order, profile)  # redelivered: the same messageIds
    await svc.settled()
    remembered = {r[0] for r in await svc.fetch("SELECT message_id FROM processed_messages")}
    assert remembered == {order.message_id, profile.message_id}
    assert await svc.value("SELECT quantity FROM purchases WHERE customer_id = 'zed'") == 2
