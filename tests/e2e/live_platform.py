"""The real ingest, stage engine, metrics and campaigns processes, with a shop's last 90 days sent through them.

The dashboard's browser test runs against this as well as against the API double: the page shows
the services' own data, and a customer whose id (and first-touch source) is markup with control
characters and direction marks is among the top; a campaign is named likewise.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from tests.conftest import drop_schemas, make_settings
from tests.secret_watch import remember_secret
from tests.utils.live_platform import LivePlatform
from tests.utils.metrics_api_double import HOSTILE, HOSTILE_CAMPAIGN

T = TypeVar("T")


def shop_events(now: datetime, customers: int = 40, seed: int = 7) -> list[dict[str, Any]]:
    """A shop's last 90 days: visits, social, trials, checkouts, orders, surveys, referrals."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []

    def ev(user: str, days_ago: float, name: str, call: str = "track", **properties: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": call,
            "userId": user,
            "messageId": str(uuid.uuid4()),
            "timestamp": (now - timedelta(days=days_ago)).isoformat(),
            "properties": properties,
            ("event" if call == "track" else "name"): name,
        }
        return body

    for i in range(customers):
        user = f"shopper-{i}"
        first = rng.uniform(5, 89)
        events.append(ev(user, first, "Home", call="page"))
        for _ in range(rng.randint(0, 4)):
            events.append(ev(user, rng.uniform(0, first), "Product", call="page"))
        events.append(ev(user, first - 0.1, rng.choice(["Social Liked", "Social Shared", "Podcast Downloaded"])))
        if rng.random() < 0.5:
            events.append(ev(user, first - 0.2, "Trial Started"))
            if rng.random() < 0.5:
                events.append(ev(user, first - 3, "Trial Converted"))
        if rng.random() < 0.6:
            at = rng.uniform(1, first)
            events.append(ev(user, at, "Checkout Started", checkout_id=f"k{i}"))
            if rng.random() < 0.7:
                events.append(ev(user, at - 0.01, "Order Completed", checkout_id=f"k{i}", revenue=rng.randint(20, 200)))
                if rng.random() < 0.4:
                    events.append(ev(user, rng.uniform(0, at), "Order Completed", revenue=rng.randint(20, 200)))
        if rng.random() < 0.5:
            events.append(ev(user, rng.uniform(0, first), "NPS Survey Answered", score=rng.randint(0, 10)))
        if rng.random() < 0.3:
            events.append(ev(user, rng.uniform(0, first), "CSAT Survey Answered", score=rng.randint(1, 5)))
        if rng.random() < 0.2:
            events.append(ev(user, rng.uniform(0, first), "Referral Sent"))
    hostile = ev(HOSTILE, 10, "Home", call="page")
    hostile["context"] = {"campaign": {"source": HOSTILE}}
    events += [hostile, ev(HOSTILE, 9.9, "Order Completed", revenue=5000)]
    return events


def hostile_campaign() -> dict[str, Any]:
    """A campaign that never fires (no shop sends its event), shown in the dashboard's campaigns panel."""
    return {
        "id": "hostile-name",
        "name": HOSTILE_CAMPAIGN,
        "trigger": {"event": "Never Sent"},
        "steps": [{"type": "send", "name": "s", "template": {"subject": "s", "html": "<p>s</p>", "text": "s"}}],
    }


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a thread of its own: Playwright's sync API keeps an event loop running on this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@contextmanager
def live_platform(kafka_bootstrap: str, database_url: str) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(metrics URL, read token, the events sent) with the four services running on the shop's data."""
    namespace = f"t{uuid.uuid4().hex[:10]}_"
    scratch = Path(tempfile.mkdtemp(prefix="clm-live-"))
    platform = LivePlatform(make_settings(kafka_bootstrap, database_url, namespace), scratch, label="live dashboard")
    # the dashboard's campaigns panel asks this campaigns service, whose mail goes to the platform's sink
    platform.env["CLM_CAMPAIGNS_URL"] = platform.url("campaigns")
    try:
        _run(platform.start_all())
        key = remember_secret(platform.cli("keys", "create", "--name", "shop"))
        token = remember_secret(platform.cli("tokens", "create", "--name", "dashboard", "--role", "read"))
        now = datetime.now(UTC)
        events = shop_events(now)
        answer = httpx.post(
            platform.url("ingest") + "/v1/batch", content=orjson.dumps({"batch": events}), auth=(key, ""), timeout=30
        )
        assert answer.status_code == 200, answer.text
        # a campaign named with markup, control characters and direction marks, as an operator may name one
        answer = httpx.post(
            platform.url("campaigns") + "/v1/campaigns",
            json=hostile_campaign(),
            headers={"Authorization": f"Bearer {platform.admin_token}"},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        _wait_applied(platform.url("metrics"), token, events, now)
        yield platform.url("metrics"), token, events
    finally:
        platform.stop_all()
        _run(drop_schemas(database_url, namespace))
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_applied(metrics: str, token: str, events: list[dict[str, Any]], now: datetime) -> None:
    """Until every page view and every order is in the metrics (the stage engine's changes follow them)."""
    pages = sum(1 for e in events if e["type"] == "page")
    params = {
        "names": "page_views",
        "from": (now - timedelta(days=120)).date().isoformat(),
        "to": (now + timedelta(days=1)).date().isoformat(),
    }
    deadline = time.monotonic() + 120
    while True:
        answer = httpx.get(metrics + "/v1/metrics", params=params, headers={"Authorization": f"Bearer {token}"})
        total = answer.json()["metrics"]["page_views"]["total"] if answer.status_code == 200 else None
        funnel = httpx.get(metrics + "/v1/funnel", headers={"Authorization": f"Bearer {token}"}).json()
        if total == pages and funnel["stages"][0]["reached"] == 41:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the metrics service applied {total} of {pages} page views in time")
        time.sleep(0.2)
