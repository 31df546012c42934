"""A fixed shop, Jan-Mar 2026, through ingest and the stage engine; every metric checked against hand-worked values.

Windows are [from, to): W = [2026-01-01, 2026-04-01). The stage engine's clock stays at 2026-01-01,
so no inactivity timer fires: health moves only by events (Subscription Cancelled churns, an order
while churned reactivates). Each customer's line says what it contributes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from clm_shared.db import create_engine, service_schema
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from ingest.app import create_app as create_ingest
from ingest.keys import create_key
from metrics.app import create_app as create_metrics
from metrics.rebuild import RebuildRefused, rebuild
from stage_engine.app import create_app as create_engine_app
from tests.utils.clock import FakeClock
from tests.utils.tokens import bearer, create_api_token
from tests.waiting import wait_for


def ev(customer: str, when: str, name: str | None = None, *, call: str = "track", source: str | None = None,
       message_id: str | None = None, **properties: Any) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {
        "type": call,
        "userId": customer,
        "messageId": message_id or str(uuid.uuid4()),
        "timestamp": when if "T" in when else when + "T12:00:00Z",
        "properties": properties,
    }
    if name is not None:
        body["event" if call == "track" else "name"] = name
    if source is not None:
        body["context"] = {"campaign": {"source": source}}
    return body


DUPLICATE = str(uuid.uuid4())

EVENTS = [
    # Visitors. page_views 4 (d1 2, d2 1, d3 1; d4's is after W), unique_visitors 3,
    # social_impressions 100 + 1 (no `impressions`: counts 1) = 101, podcast_listeners 2 (d2, d3 once).
    ev("d1", "2026-01-05", "Home", call="page", source="newsletter", message_id=DUPLICATE),
    ev("d1", "2026-01-06", "Pricing", call="page"),
    ev("d1", "2026-01-05", "Social Impression", impressions=100),
    ev("d2", "2026-01-10", "Home", call="page"),
    ev("d2", "2026-01-10", "Social Impression"),
    ev("d2", "2026-01-10", "Podcast Listened"),
    ev("d3", "2026-02-02", "Blog", call="page"),
    ev("d3", "2026-02-03", "Podcast Listened"),
    ev("d3", "2026-02-04", "Podcast Listened"),
    ev("d4", "2026-04-02", "Home", call="page"),
    ev("d5", "2026-01-15", "Ad Impression"),
    # Engagement: one each of follows, comments, shares, likes (e1: 3 engagement events in 30 days).
    # podcast_downloads 2 (e2). NPS, each customer's latest answer in W: e2 6 (its 10 came earlier),
    # e3 9, e4 7, e5 3 -> promoters 1, detractors 2, respondents 4 -> nps = 100 x (1 - 2) / 4 = -25.
    ev("e1", "2026-01-07", "Social Followed"),
    ev("e1", "2026-01-08", "Social Commented"),
    ev("e1", "2026-01-09", "Social Shared"),
    ev("e1", "2026-01-09", "Social Liked"),
    ev("e1", "2026-02-10", "Referral Sent"),
    ev("e2", "2026-01-12", "Signed Up"),
    ev("e2", "2026-01-13", "Podcast Downloaded"),
    ev("e2", "2026-02-13", "Podcast Downloaded"),
    ev("e2", "2026-01-20", "NPS Survey Answered", score=10),
    ev("e2", "2026-02-20", "NPS Survey Answered", score=6),
    ev("e3", "2026-01-14", "Signed Up"),
    ev("e3", "2026-02-01", "NPS Survey Answered", score=9),
    ev("e4", "2026-01-15", "Signed Up"),
    ev("e4", "2026-02-10", "NPS Survey Answered", score=7),
    ev("e5", "2026-03-01", "Newsletter Subscribed"),
    ev("e5", "2026-03-02", "NPS Survey Answered", score=3),
    # Trials: starters t1..t4; converted within 30 days t1 (15 d) and t4 (16 d, after W: still counts);
    # t2's subscription came 50 days later -> trial_to_paid_rate = 2 / 4 = 0.5.
    ev("t1", "2026-01-05", "Trial Started"),
    ev("t1", "2026-01-20", "Trial Converted"),
    ev("t2", "2026-01-10", "Trial Started"),
    ev("t2", "2026-03-01", "Subscription Started"),
    ev("t3", "2026-02-15", "Trial Started"),
    ev("t4", "2026-03-25", "Trial Started"),
    ev("t4", "2026-04-10", "Trial Converted"),
    # Checkouts in W: c1..c5 = 5. Abandoned: c2 (its order has another checkout_id), c4 (order 25 h
    # later) -> cart_abandonment_rate = 2 / 5 = 0.4. c3 ordered 23 h later; c5's order is after W but
    # within 24 h of its checkout. c1 and c2 came from source "google".
    ev("c1", "2026-01-10T10:00:00Z", "Checkout Started", source="google", checkout_id="k1"),
    ev("c1", "2026-01-10T12:00:00Z", "Order Completed", checkout_id="k1", revenue=100),
    ev("c2", "2026-01-11T10:00:00Z", "Checkout Started", source="google", checkout_id="k2"),
    ev("c2", "2026-01-11T11:00:00Z", "Order Completed", checkout_id="k9", revenue=50),
    ev("c3", "2026-01-12T10:00:00Z", "Checkout Started"),
    ev("c3", "2026-01-13T09:00:00Z", "Order Completed", total=80),
    ev("c4", "2026-01-14T10:00:00Z", "Checkout Started"),
    ev("c4", "2026-01-15T11:00:00Z", "Order Completed", revenue=30),
    ev("c5", "2026-03-31T20:00:00Z", "Checkout Started"),
    ev("c5", "2026-04-01T02:00:00Z", "Order Completed", revenue=40),
    # Repeat buyers. r1: retention 02-03, loyalty 03-03 (lifetime 600); CSAT 5. r2: retention 01-25,
    # advocacy 02-01 (Referral Sent; loyalty passed through). r3: retention 01-08, CSAT 3, churned
    # 02-15 (cancelled), reactivated 03-05 by an order. r4: churned 03-15. r5, r6 converted in December:
    # r5 churned 02-20; r6 is retained.
    ev("r1", "2026-01-03", "Order Completed", revenue=200),
    ev("r1", "2026-02-03", "Order Completed", revenue=200),
    ev("r1", "2026-03-03", "Order Completed", revenue=200),
    ev("r1", "2026-03-05", "CSAT Survey Answered", score=5),
    ev("r2", "2026-01-04", "Order Completed", revenue=50),
    ev("r2", "2026-01-25", "Order Completed", revenue=50),
    ev("r2", "2026-02-01", "Referral Sent"),
    ev("r3", "2026-01-06", "Order Completed", revenue=120),
    ev("r3", "2026-01-08", "Order Completed", revenue=80),
    ev("r3", "2026-01-10", "CSAT Survey Answered", score=3),
    ev("r3", "2026-02-15", "Subscription Cancelled"),
    ev("r3", "2026-03-05", "Order Completed", revenue=100),
    ev("r4", "2026-02-10", "Order Completed", revenue=60),
    ev("r4", "2026-03-15", "Subscription Cancelled"),
    ev("r5", "2025-12-20", "Order Completed", revenue=100),
    ev("r5", "2026-01-20", "Email Opened"),
    ev("r5", "2026-02-20", "Subscription Cancelled"),
    ev("r6", "2025-12-10", "Order Completed", revenue=40),
    ev("r6", "2025-12-28", "Order Completed", revenue=40),
    ev("r6", "2026-01-15", "Email Opened"),
    ev("r6", "2026-02-01", "Order Completed", revenue=40),
    # Affiliate revenue 25 + 15 (`total`) = 40; a1 converted by its order.
    ev("a1", "2026-01-20", "Order Completed", revenue=70),
    ev("a1", "2026-02-05", "Affiliate Sale", revenue=25),
    ev("a1", "2026-03-05", "Affiliate Sale", total=15),
    # The same messageId again: changes nothing.
    ev("d1", "2026-01-05", "Home", call="page", source="newsletter", message_id=DUPLICATE),
]

# Orders in W: c1 100, c2 50, c3 80, c4 30, r1 3 x 200, r2 2 x 50, r3 120 + 80 + 100, r4 60, r6 40, a1 70
# -> 15 orders, revenue 1,430 -> average_order_value = 95.333...; with source=google: (100 + 50) / 2 = 75.
# csat: r1 5 (good), r3 3 -> 1 / 2 = 0.5.
# Converted before 04-01 (13): t1, t2, c1-c4, r1-r6, a1 (c5 converts 04-01 02:00, t4 04-10).
# churn_rate: converted and not churned at 01-01: r5, r6; of them r5 churned in W -> 1 / 2 = 0.5.
# customer_retention_rate: S = 2 (r5, r6); E = 13 - r4 - r5 = 11 (r3 is reactivated); N = E converted in
# W = 10 (all but r6) -> (11 - 10) / 2 = 0.5.
# repeat_purchase_rate at 04-01: 1+ order: c1-c4, r1-r6, a1 = 11; 2+: r1, r2, r3, r6 = 4 -> 4 / 11.
# clv_historical at 04-01: revenue of the 13 converted (t1, t2 have none): 100 + 50 + 80 + 30 + 600 + 100
# + 300 + 60 + 100 + 120 + 70 = 1,610 -> 1,610 / 13.
# referral_rate: referrers r2, e1 = 2 / 13 converted.
EXPECTED_W = {
    "page_views": 4,
    "unique_visitors": 3,
    "social_impressions": 101,
    "podcast_listeners": 2,
    "social_follows": 1,
    "social_comments": 1,
    "social_shares": 1,
    "social_likes": 1,
    "podcast_downloads": 2,
    "nps": -25,
    "trial_to_paid_rate": 0.5,
    "cart_abandonment_rate": 0.4,
    "average_order_value": 1430 / 15,
    "churn_rate": 0.5,
    "repeat_purchase_rate": 4 / 11,
    "customer_retention_rate": 0.5,
    "clv_historical": 1610 / 13,
    "csat": 0.5,
    "referral_rate": 2 / 13,
    "affiliate_revenue": 40,
}


@dataclass
class Shop:
    ingest: httpx.AsyncClient
    engine: httpx.AsyncClient
    metrics: httpx.AsyncClient
    settings: Settings

    async def get(self, path: str, **params: str) -> Any:
        answer = await self.metrics.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()


async def _count(settings: Settings, service: str, sql: str) -> int:
    engine = create_engine(settings.database_url, schema=service_schema(settings, service), pool_size=1)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(text(sql)) or 0)
    except Exception:  # tables not there yet
        return -1
    finally:
        await engine.dispose()


async def settled(settings: Settings) -> bool:
    """Every touchpoint and every published lifecycle event applied by the metrics service."""
    unique = len({e["messageId"] for e in EVENTS})
    applied = await _count(settings, "metrics", "SELECT count(*) FROM processed_messages")
    engine_applied = await _count(settings, "stage-engine", "SELECT count(*) FROM processed_messages")
    published = await _count(settings, "stage-engine", "SELECT count(*) FROM history")
    outbox = await _count(settings, "stage-engine", "SELECT count(*) FROM outbox")
    events = await _count(settings, "metrics", "SELECT count(*) FROM processed_events")
    return applied == engine_applied == unique and outbox == 0 and published > 0 and events >= published


@asynccontextmanager
async def running_shop(settings: Settings, *, send: bool = True) -> AsyncIterator[Shop]:
    """Ingest, the stage engine and metrics in-process; the dataset sent and applied when ``send``."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    ingest_app, engine_app = create_ingest(settings), create_engine_app(settings, clock=clock)
    metrics_app = create_metrics(settings)
    async with (
        ingest_app.router.lifespan_context(ingest_app),
        engine_app.router.lifespan_context(engine_app),
        metrics_app.router.lifespan_context(metrics_app),
    ):
        key = await create_key(ingest_app.state.ctx.engine, name=f"shop-{uuid.uuid4().hex[:6]}")
        token = await create_api_token(metrics_app)
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=ingest_app), base_url="http://i", auth=(key, "")) as i,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=engine_app), base_url="http://e", headers=bearer(token)
            ) as e,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=metrics_app), base_url="http://m", headers=bearer(token)
            ) as m,
        ):
            shop = Shop(i, e, m, settings)
            if send:
                answer = await i.post("/v1/batch", content=orjson.dumps({"batch": EVENTS}))
                assert answer.status_code == 200, answer.text
            await wait_for(lambda: settled(settings), timeout_s=60, what="every event applied by metrics")
            yield shop


@pytest.fixture
async def shop(settings: Settings, topics: Topics) -> AsyncIterator[Shop]:
    async with running_shop(settings) as shop:
        yield shop


def approx(value: float | None, expected: float) -> bool:
    return value is not None and abs(value - expected) < 1e-9


async def test_every_metric_over_the_window_is_the_hand_worked_value(shop: Shop) -> None:
    body = await shop.get("/v1/metrics", **{"from": "2026-01-01", "to": "2026-04-01", "granularity": "month"})
    totals = {name: series["total"] for name, series in body["metrics"].items()}
    wrong = {
        name: (totals[name], expected) for name, expected in EXPECTED_W.items() if not approx(totals[name], expected)
    }
    assert wrong == {}
    assert body["from"] == "2026-01-01" and body["granularity"] == "month"
    # Page views by month: January d1 2 + d2 1, February d3, March none.
    assert [p["value"] for p in body["metrics"]["page_views"]["series"]] == [3, 1, 0]
    assert [p["start"] for p in body["metrics"]["page_views"]["series"]] == ["2026-01-01", "2026-02-01", "2026-03-01"]


async def test_another_window_gives_its_own_values_and_empty_denominators_are_null(shop: Shop) -> None:
    body = await shop.get("/v1/metrics", **{"from": "2026-02-01", "to": "2026-03-01", "names": "page_views,nps,csat"})
    totals = {name: series["total"] for name, series in body["metrics"].items()}
    # February: d3's page; NPS latest answers e2 6, e3 9, e4 7 -> 100 x (1 - 1) / 3 = 0; no CSAT answers.
    assert totals == {"page_views": 1, "nps": 0, "csat": None}


async def test_source_keeps_the_customers_whose_first_touch_came_from_it(shop: Shop) -> None:
    body = await shop.get(
        "/v1/metrics",
        **{"from": "2026-01-01", "to": "2026-04-01", "source": "google", "names": "average_order_value,page_views"},
    )
    assert body["metrics"]["average_order_value"]["total"] == 75
    assert body["metrics"]["page_views"]["total"] == 0
    newsletter = await shop.get("/v1/metrics", **{"from": "2026-01-01", "to": "2026-04-01", "source": "newsletter"})
    assert newsletter["metrics"]["page_views"]["total"] == 2 and newsletter["metrics"]["unique_visitors"]["total"] == 1


async def test_the_funnel_and_the_top_customers_share(shop: Shop) -> None:
    body = await shop.get("/v1/funnel", at="2026-04-01T00:00:00Z")
    # Reached before 04-01: everyone but d4 (25); engagement 20 (e1-e5, t1-t4, and every converted customer,
    # who passed through it); conversion 13; retention r1, r2, r3, r6; loyalty r1, r2 (passed through on
    # the way to advocacy); advocacy r2.
    reached = [s["reached"] for s in body["stages"]]
    assert reached == [25, 20, 13, 4, 2, 1]
    assert [s["current"] for s in body["stages"]] == [5, 7, 9, 2, 1, 1]
    # Customers per stage over time end where the funnel's current counts are (the March bucket ends 04-01).
    series = await shop.get("/v1/stages", **{"from": "2026-01-01", "to": "2026-04-01", "granularity": "month"})
    assert [points[-1]["value"] for points in series["series"].values()] == [5, 7, 9, 2, 1, 1]
    conversion = [s["conversion_to_next"] for s in body["stages"]]
    assert conversion == [0.8, 0.65, 4 / 13, 0.5, 0.5, None]
    # Retention -> loyalty: r1 28 days (02-03 -> 03-03), r2 7 days (01-25 -> 02-01): median 17.5.
    assert body["stages"][3]["median_days_to_next"] == 17.5
    assert body["stages"][4]["median_days_to_next"] == 0  # r2 passed loyalty on the way to advocacy
    # Lifetime revenue of the 11 buyers: the top 20% (2) are r1 600 and r3 300, of 1,610.
    assert approx(body["top20_revenue_share"], 900 / 1610)


async def test_cohorts_by_month_of_first_order(shop: Shop) -> None:
    body = await shop.get("/v1/cohorts", **{"from": "2026-01-01", "to": "2026-04-01"})
    # January: c1-c4, r1, r2, r3, a1 (8); February r1 ordered again (1/8); March r1 and r3 (2/8).
    # February: r4 alone, no later order. December's r5 and r6 are before the range.
    assert body["cohorts"] == [
        {"cohort": "2026-01", "customers": 8, "retention": [1.0, 0.125, 0.25]},
        {"cohort": "2026-02", "customers": 1, "retention": [1.0, 0.0]},
    ]


async def test_bad_parameters_are_400_naming_the_parameter(shop: Shop) -> None:
    for params, parameter in [
        ({"names": "page_views,bogus"}, "names"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-03-01", "to": "2026-02-01"}, "from"),
        ({"granularity": "hour"}, "granularity"),
    ]:
        answer = await shop.metrics.get("/v1/metrics", params=params)
        assert answer.status_code == 400 and answer.json()["detail"]["parameter"] == parameter, (params, answer.text)
    answer = await shop.metrics.get("/v1/funnel", params={"at": "soon"})
    assert answer.status_code == 400 and answer.json()["detail"]["parameter"] == "at"


async def test_an_erased_customer_leaves_counts_but_nothing_that_names_them(shop: Shop) -> None:
    assert (await shop.engine.delete("/v1/customers/c1")).status_code == 204

    async def gone() -> bool:
        sql = "SELECT count(*) FROM {} WHERE customer_id = 'c1'"
        counts = [
            await _count(shop.settings, "metrics", sql.format(t))
            for t in ("customers", "daily_facts", "key_events", "stage_reached")
        ]
        return counts == [0, 0, 0, 0]

    await wait_for(gone, timeout_s=60, what="c1's facts re-keyed")
    body = await shop.get("/v1/metrics", **{"from": "2026-01-01", "to": "2026-04-01", "names": "average_order_value"})
    assert approx(body["metrics"]["average_order_value"]["total"], 1430 / 15)


async def everything(shop: Shop) -> list[Any]:
    window = {"from": "2026-01-01", "to": "2026-04-01"}
    return [
        await shop.get("/v1/metrics", granularity="week", **window),
        await shop.get("/v1/funnel", at="2026-04-01T00:00:00Z"),
        await shop.get("/v1/cohorts", **window),
        await shop.get("/v1/stages", granularity="week", **window),
    ]


async def test_a_rebuild_from_the_topics_gives_the_same_metrics_and_is_refused_while_metrics_run(
    settings: Settings, topics: Topics
) -> None:
    async with running_shop(settings) as shop:
        before = await everything(shop)
        with pytest.raises(RebuildRefused, match="metrics service"):
            await rebuild(settings)
    report = await rebuild(settings)
    assert report.touchpoints == len({e["messageId"] for e in EVENTS}) + 1  # the duplicate is on the topic too
    async with running_shop(settings, send=False) as shop:
        assert await everything(shop) == before


async def test_clv_historical_now_top_customers_and_a_prediction_refused_on_thin_data(shop: Shop) -> None:
    async def fitted() -> bool:
        return bool((await shop.get("/v1/clv"))["predicted"]["status"] != "not_fitted_yet")

    await wait_for(fitted, timeout_s=60, what="the first CLV fit")
    body = await shop.get("/v1/clv")
    # Now (after April): 15 converted (t4 and c5 too); revenue 1,610 + c5's 40.
    assert body["historical"] == {"mean": 1650 / 15, "customers": 15}
    assert body["top_customers"][:2] == [{"customer_id": "r1", "revenue": 600}, {"customer_id": "r3", "revenue": 300}]
    assert sum(b["customers"] for b in body["distribution"]) == 15
    # 12 buyers are far too few for BG/NBD + Gamma-Gamma: the API says so instead of inventing a number.
    assert body["predicted"]["status"] == "insufficient_data" and body["predicted"]["mean_12m"] is None
    assert "customers" in body["predicted"]["reason"]


async def test_prometheus_has_customers_per_current_stage_and_health(shop: Shop) -> None:
    # Now (after April) c5 and t4 have converted too; d4 has visited. Current stages: discovery d1-d5;
    # engagement e1-e5, t3; conversion t1, t2, t4, c1-c5, r4, r5, a1; retention r3, r6; loyalty r1;
    # advocacy r2. Health: r4 and r5 churned, r3 reactivated, the other 23 of the 26 active.
    expected = {
        "discovery": 5, "engagement": 6, "conversion": 11, "retention": 2, "loyalty": 1, "advocacy": 1,
        "churned": 2, "reactivated": 1, "active": 23, "at_risk": 0,
    }  # fmt: skip

    async def exported() -> dict[str, float]:
        found = {}
        for line in (await shop.metrics.get("/metrics")).text.splitlines():
            if line.startswith(("clm_metrics_customers_by_stage{", "clm_metrics_customers_by_health{")):
                label, value = line.split("} ")
                found[label.split('"')[1]] = float(value)
        return found

    async def updated() -> bool:
        return await exported() == expected  # the gauges refresh every 15 s (and are process-wide)

    with contextlib.suppress(pytest.fail.Exception):
        await wait_for(updated, timeout_s=40, what="the gauges updated")
    assert await exported() == expected


async def test_distinct_customers_per_day_and_over_longer_buckets(shop: Shop) -> None:
    window = {"from": "2026-01-05", "to": "2026-01-12", "names": "unique_visitors,page_views"}
    by_day = (await shop.get("/v1/metrics", granularity="day", **window))["metrics"]
    # d1 visits on the 5th and 6th, d2 on the 10th: one visitor a day, two in the week, three page views.
    assert [p["value"] for p in by_day["unique_visitors"]["series"]] == [1, 1, 0, 0, 0, 1, 0]
    assert by_day["unique_visitors"]["total"] == 2 and by_day["page_views"]["total"] == 3
    by_week = (await shop.get("/v1/metrics", granularity="week", **window))["metrics"]
    assert [p["value"] for p in by_week["unique_visitors"]["series"]] == [2]
