"""The campaigns API in-process on real PostgreSQL: versions, status changes, stats, members, messages, tokens."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from campaigns.app import create_app
from clm_shared.access.tokens import Role
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from clm_shared.transactions import transaction
from tests.utils.tokens import bearer, create_api_token

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def definition(campaign_id: str = "welcome", **overrides: Any) -> dict[str, Any]:
    """A valid campaign: a split, an email to everyone, a webhook only for variant b."""
    body: dict[str, Any] = {
        "id": campaign_id,
        "name": "Welcome",
        "trigger": {"stage_entered": "engagement"},
        "steps": [
            {"type": "split", "variants": {"a": 1, "b": 1}},
            {
                "type": "send",
                "name": "welcome mail",
                "template": {"subject": "Hi", "html": "<p>Hi</p>", "text": "Hi"},
            },
            {
                "type": "send",
                "name": "crm ping",
                "channel": "webhook",
                "url": "https://crm.test/hook",
                "only_variant": "b",
            },
        ],
    }
    body.update(overrides)
    return body


@dataclass
class Api:
    admin: httpx.AsyncClient
    read: httpx.AsyncClient
    anonymous: httpx.AsyncClient
    engine: AsyncEngine


@pytest.fixture
async def api(settings: Settings, topics: Topics) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with transaction(app.state.ctx.engine) as db:  # start from no campaigns, not the shipped ones
            await db.execute("DELETE FROM campaigns; DELETE FROM campaign_versions")
        admin, read = await create_api_token(app, Role.ADMIN), await create_api_token(app, Role.READ)
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://c", headers=bearer(admin)) as a,
            httpx.AsyncClient(transport=transport, base_url="http://c", headers=bearer(read)) as r,
            httpx.AsyncClient(transport=transport, base_url="http://c") as anonymous,
        ):
            yield Api(a, r, anonymous, app.state.ctx.engine)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def test_a_change_is_a_new_version_and_the_old_one_stays_readable(api: Api) -> None:
    created = ok(await api.admin.post("/v1/campaigns", json=definition()), 201)
    assert (created["id"], created["version"], created["status"], created["origin"]) == ("welcome", 1, "live", "api")
    assert created["definition"]["steps"][1]["name"] == "welcome mail"

    changed = ok(await api.admin.put("/v1/campaigns/welcome", json=definition(name="Welcome, again")))
    assert (changed["version"], changed["name"]) == (2, "Welcome, again")
    unchanged = ok(await api.admin.put("/v1/campaigns/welcome", json=definition(name="Welcome, again")))
    assert unchanged["version"] == 2

    assert ok(await api.read.get("/v1/campaigns/welcome"))["definition"]["name"] == "Welcome, again"
    first = ok(await api.read.get("/v1/campaigns/welcome/versions/1"))
    assert (first["definition"]["name"], first["current"]) == ("Welcome", False)
    assert ok(await api.read.get("/v1/campaigns/welcome/versions/2"))["current"] is True
    assert (await api.read.get("/v1/campaigns/welcome/versions/3")).status_code == 404

    listed = ok(await api.read.get("/v1/campaigns"))["items"]
    assert [(c["id"], c["version"], c["status"], c["trigger"]) for c in listed] == [
        ("welcome", 2, "live", {"stage_entered": "engagement"})
    ]


async def test_changes_at_the_same_time_each_get_a_version_of_their_own(api: Api) -> None:
    ok(await api.admin.post("/v1/campaigns", json=definition()), 201)
    answers = await asyncio.gather(
        *(api.admin.put("/v1/campaigns/welcome", json=definition(name=f"Welcome {i}")) for i in range(5))
    )
    assert sorted(ok(a)["version"] for a in answers) == [2, 3, 4, 5, 6]
    for version in range(2, 7):
        assert ok(await api.read.get(f"/v1/campaigns/welcome/versions/{version}"))["definition"]["name"].startswith(
            "Welcome "
        )


async def test_an_existing_id_is_refused_and_an_archived_one_comes_back_as_its_next_version(api: Api) -> None:
    ok(await api.admin.post("/v1/campaigns", json=definition()), 201)
    conflict = await api.admin.post("/v1/campaigns", json=definition(name="Other"))
    assert conflict.status_code == 409 and conflict.json()["detail"].startswith("id:")

    ok(await api.admin.delete("/v1/campaigns/welcome"), 204)
    assert ok(await api.read.get("/v1/campaigns/welcome"))["status"] == "archived"
    assert ok(await api.read.get("/v1/campaigns"))["items"] == []
    assert [c["id"] for c in ok(await api.read.get("/v1/campaigns?include_archived=true"))["items"]] == ["welcome"]
    for refused in (
        await api.admin.post("/v1/campaigns/welcome/resume"),
        await api.admin.post("/v1/campaigns/welcome/pause"),
        await api.admin.put("/v1/campaigns/welcome", json=definition(name="Changed")),
    ):
        assert refused.status_code == 409, refused.text

    back = ok(await api.admin.post("/v1/campaigns", json=definition()), 201)
    assert (back["version"], back["status"]) == (2, "live")


async def test_unknown_campaigns_are_404(api: Api) -> None:
    for response in (
        await api.read.get("/v1/campaigns/nope"),
        await api.read.get("/v1/campaigns/nope/versions/1"),
        await api.read.get("/v1/campaigns/nope/stats"),
        await api.read.get("/v1/campaigns/nope/members"),
        await api.admin.put("/v1/campaigns/nope", json=definition("nope")),
        await api.admin.delete("/v1/campaigns/nope"),
        await api.admin.post("/v1/campaigns/nope/pause"),
        await api.admin.post("/v1/campaigns/nope/resume"),
    ):
        assert response.status_code == 404, (response.request.url, response.text)
    ok(await api.admin.post("/v1/campaigns", json=definition()), 201)
    for out_of_range in (
        "/v1/campaigns/welcome/versions/99999999999",
        "/v1/campaigns/welcome/versions/0",
        "/v1/campaigns/welcome/members?after=99999999999999999999",
        "/v1/campaigns/welcome/members?limit=0",
        "/v1/customers/u1/messages?before=-1",
    ):
        assert (await api.read.get(out_of_range)).status_code == 422, out_of_range


async def test_a_wrong_definition_is_refused_with_the_field_named(api: Api) -> None:
    no_template = definition(steps=[{"type": "send", "name": "mail"}])
    bad_id = definition("Not An Id")
    for body, field in ((no_template, "steps.0.template:"), (bad_id, "id:"), ({"id": "x"}, "name:")):
        refused = await api.admin.post("/v1/campaigns", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"].startswith(field), refused.json()
    assert (await api.admin.post("/v1/campaigns", json=[1, 2])).status_code == 422

    ok(await api.admin.post("/v1/campaigns", json=definition()), 201)
    elsewhere = await api.admin.put("/v1/campaigns/welcome", json=definition("other"))
    assert elsewhere.status_code == 422 and elsewhere.json()["detail"].startswith("id:")
    invalid = await api.admin.put("/v1/campaigns/welcome", json=definition(steps=[]))
    assert invalid.status_code == 422 and invalid.json()["detail"].startswith("steps:")
    assert ok(await api.read.get("/v1/campaigns/welcome"))["version"] == 1


async def test_changes_need_an_admin_token_and_everything_needs_one(api: Api) -> None:
    ok(await api.admin.post("/v1/campaigns", json=definition()), 201)
    for method, url in (
        ("POST", "/v1/campaigns"),
        ("PUT", "/v1/campaigns/welcome"),
        ("DELETE", "/v1/campaigns/welcome"),
        ("POST", "/v1/campaigns/welcome/pause"),
        ("POST", "/v1/campaigns/welcome/resume"),
    ):
        body = orjson.dumps(definition()) if method in ("POST", "PUT") else None
        assert (await api.read.request(method, url, content=body)).status_code == 403, (method, url)
        assert (await api.anonymous.request(method, url, content=body)).status_code == 401, (method, url)
    for url in ("/v1/campaigns", "/v1/campaigns/welcome", "/v1/campaign-stats", "/v1/customers/u1/messages"):
        assert (await api.anonymous.get(url)).status_code == 401, url
        assert (await api.read.get(url)).status_code == 200, url
    assert ok(await api.read.get("/v1/campaigns/welcome"))["status"] == "live"


async def test_pause_and_resume(api: Api) -> None:
    ok(await api.admin.post("/v1/campaigns", json=definition()), 201)
    assert ok(await api.admin.post("/v1/campaigns/welcome/pause"))["status"] == "paused"
    assert ok(await api.read.get("/v1/campaigns/welcome"))["status"] == "paused"
    # A change while paused stays paused.
    assert ok(await api.admin.put("/v1/campaigns/welcome", json=definition(name="New")))["status"] == "paused"
    assert ok(await api.admin.post("/v1/campaigns/welcome/resume"))["status"] == "live"
    assert ok(await api.read.get("/v1/campaigns/welcome"))["status"] == "live"


async def seed_counts(engine: AsyncEngine, campaign_id: str, counts: dict[str, int]) -> None:
    async with transaction(engine) as db:
        await db.executemany(
            "INSERT INTO campaign_counts (campaign_id, counter, count) VALUES ($1, $2, $3)",
            [(campaign_id, name, value) for name, value in counts.items()],
        )


async def test_stats_compare_treatment_with_the_holdout(api: Api) -> None:
    for campaign_id in ("welcome", "winback", "gone"):
        ok(await api.admin.post("/v1/campaigns", json=definition(campaign_id)), 201)
    # 400 entered, 40 held out: treatment 360, 54 converted after entry (15%), 50 of them within the window
    # after a send (attributed); holdout 2 of 40 (5%): uplift 10 points, x2.
    await seed_counts(
        api.engine,
        "welcome",
        {"entered": 400, "holdout": 40, "sent": 700, "failed": 2, "exited": 10, "completed": 300,
         "converted": 50, "treatment_converted": 54, "holdout_converted": 2, "held:capped": 7, "held:holdout": 40,
         "held:suppressed": 1},
    )  # fmt: skip
    await seed_counts(api.engine, "winback", {"entered": 10, "sent": 10, "converted": 1, "treatment_converted": 1})
    await seed_counts(api.engine, "gone", {"entered": 5})
    ok(await api.admin.delete("/v1/campaigns/gone"), 204)

    stats = ok(await api.read.get("/v1/campaigns/welcome/stats"))
    assert (stats["entered"], stats["treatment"], stats["sent"], stats["failed"]) == (400, 360, 700, 2)
    assert (stats["exited"], stats["completed"], stats["converted"], stats["treatment_converted"]) == (10, 300, 50, 54)
    assert stats["conversion_rate"] == pytest.approx(0.15)
    assert stats["holdout"] == {"members": 40, "converted": 2, "conversion_rate": pytest.approx(0.05)}
    assert stats["uplift"] == pytest.approx(0.10)
    assert stats["relative_uplift"] == pytest.approx(2.0)
    assert stats["held_back"] == {"capped": 7, "holdout": 40, "suppressed": 1}

    listed = ok(await api.read.get("/v1/campaign-stats"))["items"]
    assert [s["campaign_id"] for s in listed] == ["welcome", "winback"]
    assert listed[0] == stats
    winback = listed[1]
    assert (winback["conversion_rate"], winback["holdout"]["conversion_rate"], winback["uplift"]) == (0.1, None, None)
    # An archived campaign's own stats stay readable.
    assert ok(await api.read.get("/v1/campaigns/gone/stats"))["entered"] == 5


async def seed_run(
    engine: AsyncEngine, campaign_id: str, customer_id: str, *, status: str, version: int = 1, step: int = 1,
    variant: str | None = "a", waiting_for: str | None = None,
) -> None:  # fmt: skip
    async with transaction(engine) as db:
        await db.execute(
            "INSERT INTO runs (campaign_id, version, customer_id, trigger_id, trigger, status, step, variant,"
            " entered_at, step_since, due_at, waiting_for) VALUES ($1, $2, $3, $4, '{}'::jsonb, $5, $6, $7, $8, $9,"
            " $10, $11)",
            campaign_id,
            version,
            customer_id,
            str(uuid.uuid4()),
            status,
            step,
            variant,
            T0,
            T0 + timedelta(hours=1),
            T0 + timedelta(days=1),
            waiting_for,
        )


async def test_members_are_the_runs_in_progress_in_keyset_pages_with_their_versions_step(api: Api) -> None:
    ok(await api.admin.post("/v1/campaigns", json=definition()), 201)
    ok(await api.admin.post("/v1/campaigns", json=definition("other")), 201)
    for i in range(4):
        await seed_run(api.engine, "welcome", f"old-{i}", status="active" if i % 2 else "waiting")
    # Version 2 renames the mail: runs on version 1 keep showing version 1's step.
    steps = definition()["steps"]
    steps[1] = {**steps[1], "name": "renamed mail"}
    ok(await api.admin.put("/v1/campaigns/welcome", json=definition(steps=steps)), 200)
    for i in range(3):
        await seed_run(api.engine, "welcome", f"new-{i}", status="waiting", version=2, step=2, variant="b")
    await seed_run(api.engine, "welcome", "finished", status="done")
    await seed_run(api.engine, "welcome", "held-out", status="holdout", step=0, variant=None)
    await seed_run(api.engine, "other", "elsewhere", status="active")

    pages: list[list[dict[str, Any]]] = []
    url = "/v1/campaigns/welcome/members?limit=3"
    after: int | None = None
    while True:
        page = ok(await api.read.get(url + (f"&after={after}" if after is not None else "")))
        pages.append(page["items"])
        after = page["next"]
        if after is None:
            break
        assert len(pages) < 5, "the pages do not end"
    assert [len(p) for p in pages] == [3, 3, 1]
    members = [m for p in pages for m in p]
    assert [m["customer_id"] for m in members] == [*(f"old-{i}" for i in range(4)), *(f"new-{i}" for i in range(3))]
    assert [m["run_id"] for m in members] == sorted(m["run_id"] for m in members)
    old, new = members[0], members[-1]
    assert (old["version"], old["step"], old["step_type"], old["step_name"], old["variant"]) == (
        1, 1, "send", "welcome mail", "a",
    )  # fmt: skip
    assert (new["version"], new["step"], new["step_type"], new["step_name"], new["status"]) == (
        2, 2, "send", "crm ping", "waiting",
    )  # fmt: skip
    assert old["since"] == "2026-03-01T01:00:00Z" and old["due_at"] == "2026-03-02T00:00:00Z"
    renamed = await api.read.get("/v1/campaigns/welcome/members?limit=1&after=" + str(members[3]["run_id"]))
    assert ok(renamed)["items"][0]["customer_id"] == "new-0"


async def test_a_customers_messages_newest_first_in_keyset_pages(api: Api) -> None:
    async with transaction(api.engine) as db:
        await db.execute("INSERT INTO identities (alias_id, customer_id) VALUES ('anon-7', 'u7')")
        for i in range(5):
            await db.execute(
                "INSERT INTO messages (campaign_id, version, customer_id, trigger_id, step, step_name, channel, status,"
                " reason, attempts, due_at, created_at, sent_at, last_error)"
                " VALUES ('welcome', 1, $1, $2, $3, $4, 'email', $5, $6, $7, $8, $8, $9, $10)",
                "u7",
                f"t{i}",
                i,
                f"step {i}",
                "held" if i == 3 else "sent",
                "quiet_hours" if i == 3 else None,
                1,
                T0 + timedelta(minutes=i),
                None if i == 3 else T0 + timedelta(minutes=i, seconds=5),
                "550 mailbox of someone@example.com full" if i == 1 else None,
            )
        await db.execute(
            "INSERT INTO messages (campaign_id, version, customer_id, trigger_id, step, step_name, channel, status,"
            " due_at, created_at) VALUES ('welcome', 1, 'u8', 't', 0, 'x', 'email', 'sent', $1, $1)",
            T0,
        )
    first = ok(await api.read.get("/v1/customers/u7/messages?limit=2"))
    second = ok(await api.read.get(f"/v1/customers/u7/messages?limit=2&before={first['next']}"))
    third = ok(await api.read.get(f"/v1/customers/anon-7/messages?limit=2&before={second['next']}"))
    assert third["next"] is None
    steps = [m["step"] for page in (first, second, third) for m in page["items"]]
    assert steps == [4, 3, 2, 1, 0]
    held = first["items"][1]
    assert (held["status"], held["reason"], held["sent_at"], held["step_name"]) == (
        "held",
        "quiet_hours",
        None,
        "step 3",
    )
    assert first["items"][0]["campaign_id"] == "welcome" and first["items"][0]["channel"] == "email"
    assert "example.com" not in str((first, second, third))
    assert ok(await api.read.get("/v1/customers/nobody/messages")) == {"items": [], "next": None}


async def test_a_customer_whose_id_holds_a_slash_or_a_newline_has_their_messages_found(api: Api) -> None:
    customer = "shop/<b>1</b>\n'; --"
    async with transaction(api.engine) as db:
        await db.execute(
            "INSERT INTO messages (campaign_id, version, customer_id, trigger_id, step, step_name, channel, status,"
            " due_at, created_at) VALUES ('welcome', 1, $1, 't', 0, 'x', 'email', 'sent', $2, $2)",
            customer,
            T0,
        )
    page = ok(await api.read.get(f"/v1/customers/{quote(customer, safe='')}/messages"))
    assert [(m["campaign_id"], m["step_name"]) for m in page["items"]] == [("welcome", "x")]


async def test_a_campaign_with_waits_reads_back_as_it_was_written(api: Api) -> None:
    steps = [
        {"type": "wait", "duration": "1d"},
        {"type": "wait_for_event", "event": "Order Completed", "timeout": "2h"},
        *definition()["steps"],
    ]
    ok(await api.admin.post("/v1/campaigns", json=definition(steps=steps)), 201)
    stored = ok(await api.read.get("/v1/campaigns/welcome"))["definition"]
    assert [stored["steps"][0]["duration"], stored["steps"][1]["timeout"]] == ["1d", "2h"]
    # What GET gives is a definition PUT takes back unchanged.
    assert ok(await api.admin.put("/v1/campaigns/welcome", json=stored))["version"] == 1
