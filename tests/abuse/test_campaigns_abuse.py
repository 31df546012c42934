"""Hostile text through the campaigns service (real Kafka, PostgreSQL and SMTP sink): kept verbatim, escaped in HTML.

What a user can send: definitions through the API (name, description, step names, templates, the
trigger's event name, variant names, audience values) and, through ingest, customer ids and traits
(a name, an email address with a display name). SQL, markup, control characters, direction marks
and long unicode must come back byte for byte as JSON, be HTML-escaped in the HTML part of a mail,
never start a header, and never cost a 5xx; what cannot be stored is refused naming the field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from markupsafe import escape

from clm_shared.access.tokens import Role
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from tests.abuse.conftest import Service, abuse_settings, serving
from tests.utils.campaigns import CampaignsUnderTest, running_campaigns
from tests.utils.clock import FakeClock
from tests.utils.factories import touchpoint
from tests.utils.tokens import bearer, create_api_token
from tests.waiting import wait_for

T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, noon UTC: outside quiet hours
SQL = "'; DROP TABLE campaigns; --"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
CONTROL = "\x01\x1b[31m\x1f\x7f"
BIDI = "\u202etxet\u202c \u200f"
HOSTILE = f"{SQL} {SCRIPT} {IMG} {CONTROL} {BIDI} ü😀"
LONG = "ü😀" * 40  # 80 characters, 120 bytes as UTF-8
# Header injection through the template (a subject) and through a trait rendered into the subject.
SUBJECT_INJECTION = "Hi\r\nBcc: evil@example.test\r\nX-Injected: 1"


def hostile_definition(campaign_id: str = "hostile", **overrides: Any) -> dict[str, Any]:
    """A campaign whose every free-text field holds hostile text; it fires on a hostile event name."""
    body: dict[str, Any] = {
        "id": campaign_id,
        "name": f"{HOSTILE[:150]} {LONG[:40]}",
        "description": f"{HOSTILE} {LONG}\r\n{SQL}",
        "trigger": {"event": f"Bought {SCRIPT} {BIDI}"},
        "audience": [{"field": "traits.plan", "op": "ne", "value": HOSTILE}],
        "exit_on": [f"{SQL} {CONTROL}"],
        "steps": [
            {"type": "split", "variants": {f"a {SCRIPT}": 1, f"b {BIDI}": 0}},
            {
                "type": "send",
                "name": f"mail {SCRIPT} {CONTROL}"[:100],
                "template": {
                    "subject": SUBJECT_INJECTION + " {{ customer.first_name }}",
                    "html": (
                        "<p>Hello {{ customer.first_name }}</p><p>{{ campaign.name }}</p>"
                        "<p>{{ event.properties.note }}</p><p>{{ customer.id }}</p>"
                    ),
                    "text": "Hello {{ customer.first_name }}\n{{ campaign.name }}\n{{ event.properties.note }}",
                },
            },
            {"type": "wait", "duration": "1d"},  # keeps the run in: the members page shows the customer
            {"type": "send", "name": "later", "template": {"subject": "s", "html": "h", "text": "t"}},
        ],
    }
    body.update(overrides)
    return body


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text[:500]
    return response.json() if response.content else None


@pytest.fixture
async def campaigns(settings: Settings, topics: Topics, tmp_path: Path) -> AsyncIterator[Service]:
    async with serving("campaigns", abuse_settings(settings, tmp_path)) as service:
        yield service


def client(service: Service, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=service.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


async def test_hostile_definitions_are_stored_and_answered_verbatim(campaigns: Service) -> None:
    sent = hostile_definition()
    async with client(campaigns, campaigns.admin) as admin, client(campaigns, campaigns.read) as read:
        created = ok(await admin.post("/v1/campaigns", json=sent), 201)
        assert created["name"] == sent["name"]
        assert {key: created["definition"][key] for key in sent if key != "steps"} == {
            key: value for key, value in sent.items() if key != "steps"
        }
        assert [step.get("name") for step in created["definition"]["steps"]] == [
            step.get("name") for step in sent["steps"]
        ]
        assert created["definition"]["steps"][1]["template"] == sent["steps"][1]["template"]
        assert created["definition"]["steps"][0]["variants"] == sent["steps"][0]["variants"]
        fetched = ok(await read.get("/v1/campaigns/hostile"))
        assert fetched["definition"] == created["definition"]
        listed = ok(await read.get("/v1/campaigns"))["items"]
        assert [c["name"] for c in listed if c["id"] == "hostile"] == [sent["name"]]
        assert ok(await read.get("/v1/campaigns/hostile/versions/1"))["definition"] == created["definition"]
        assert ok(await read.get("/v1/campaigns/hostile/stats"))["name"] == sent["name"]
        stats = ok(await read.get("/v1/campaign-stats"))["items"]
        assert [s["name"] for s in stats if s["campaign_id"] == "hostile"] == [sent["name"]]

        changed = hostile_definition(name=f"{LONG} {BIDI} {CONTROL}")
        assert ok(await admin.put("/v1/campaigns/hostile", json=changed))["version"] == 2
        assert ok(await read.get("/v1/campaigns/hostile"))["name"] == changed["name"]
        assert ok(await read.get("/v1/campaigns/hostile/versions/1"))["definition"]["name"] == sent["name"]


@pytest.mark.parametrize("campaign_id", [SQL, SCRIPT, IMG, CONTROL, BIDI, LONG, "x" * 65, "Welcome", "a\x00b"])
async def test_a_hostile_campaign_id_is_refused_by_name_and_never_found(campaigns: Service, campaign_id: str) -> None:
    async with client(campaigns, campaigns.admin) as admin:
        refused = await admin.post("/v1/campaigns", json=hostile_definition(campaign_id))
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"].startswith("id: ")
        path = quote(campaign_id, safe="")
        for method, suffix in [("GET", ""), ("GET", "/stats"), ("GET", "/members"), ("DELETE", ""), ("POST", "/pause")]:
            answer = await admin.request(method, f"/v1/campaigns/{path}{suffix}")
            assert answer.status_code == 404, (method, suffix, answer.text)
            # an id with a slash or a NUL matches no route (ids never hold one): the router's own 404
            routed = "/" not in campaign_id and "\x00" not in campaign_id
            named = f"id: no campaign {campaign_id!r}" if routed else "Not Found"
            assert answer.json()["detail"] == named


@pytest.mark.parametrize(
    ("where", "body", "field"),
    [
        ("name", b'"a\\u0000b"', "name"),
        ("description", b'"\\u0000"', "description"),
        ("description", b'"half \\ud83d of an emoji"', "description"),
        ("value", b"NaN", "audience.0.value"),
        ("value", b"Infinity", "audience.0.value"),
        ("value", b"-1e400", "audience.0.value"),
        ("value", b"[1, 1180591620717411303424]", "audience.0.value.1"),
        ("value", b"[" * 300 + b"]" * 300, "audience.0.value" + ".0" * 62),
        ("subject", b'"Hi \\u0000"', "steps.1.template.subject"),
        ("step", b'"x\\u0000"', "steps.1.name"),
    ],
)
async def test_what_postgresql_cannot_keep_is_refused_naming_the_field(
    campaigns: Service, where: str, body: bytes, field: str
) -> None:
    """A NUL or a lone surrogate in text was a 500; NaN, infinity and 1e400 were stored as null, after
    which every listing was a 500; a 70-bit integer came back as a float; a list 300 levels deep was a
    500. Now each is a 422 naming the field."""
    placeholder = "@@VALUE@@"
    op = "in" if body.startswith(b"[") else "gt"  # a value that suits its op: only the number is wrong
    definition = hostile_definition(audience=[{"field": "traits.plan", "op": op, "value": 1}])
    if where in ("name", "description"):
        definition[where] = placeholder
    elif where == "value":
        definition["audience"][0]["value"] = placeholder
    elif where == "subject":
        definition["steps"][1]["template"]["subject"] = placeholder
    else:
        definition["steps"][1]["name"] = placeholder
    raw = orjson.dumps(definition).replace(f'"{placeholder}"'.encode(), body)
    async with client(campaigns, campaigns.admin) as admin:
        refused = await admin.post("/v1/campaigns", content=raw, headers={"Content-Type": "application/json"})
        assert refused.status_code == 422, refused.text[:300]
        assert refused.json()["detail"].startswith(f"{field}: "), refused.text[:300]
        assert ok(await admin.get("/v1/campaigns"))["items"] is not None
        assert ok(await admin.get("/v1/campaign-stats"))["items"] is not None
        assert (await admin.get("/v1/campaigns/hostile")).status_code == 404


# ---- customers: ids and traits rendered into mail --------------------------------------------


def identify(customer: str, address: str, **traits: Any) -> Any:
    return touchpoint(
        None, customer=customer, call_type="identify", at=T - timedelta(minutes=5), traits={"email": address, **traits}
    )


@pytest.fixture
async def svc(settings: Settings, topics: Topics, tmp_path: Path) -> AsyncIterator[CampaignsUnderTest]:
    quiet = {"campaigns_quiet_hours": "", "campaigns_holdout_percent": 0.0}
    async with running_campaigns(settings, topics, FakeClock(T), tmp_path / "mail", **quiet) as svc:
        yield svc


def raw_headers(message: EmailMessage) -> list[str]:
    """The header names as the sink stored them: an injected header would be one of these."""
    return [name.lower() for name in message]


async def test_hostile_customers_get_escaped_mail_and_no_header_is_injected(svc: CampaignsUnderTest) -> None:
    transport = httpx.ASGITransport(app=svc.app)
    admin_token = await create_api_token(svc.app, Role.ADMIN)
    async with httpx.AsyncClient(transport=transport, base_url="http://c", headers=bearer(admin_token)) as api:
        definition = hostile_definition()
        ok(await api.post("/v1/campaigns", json=definition), 201)

        ann = f"{HOSTILE} {LONG}"  # the customer id itself
        first_name = f"{SCRIPT} {IMG} {SQL} {CONTROL} {BIDI}\r\nX-Injected: 2"
        display = f'"Ann {BIDI} {SCRIPT}" <ann@example.test>'
        # an address with a line break, a second address after a comma, a Unicode line separator
        bad = {
            "crlf": "bob@example.test\r\nBcc: evil@example.test",
            "comma": "cat@example.test, evil@example.test",
            "separator": "dan@example.test\u2028Bcc: evil@example.test",
            "escape": "eve@example.test\x1b[31m",
        }
        await svc.touch(identify(ann, display, first_name=first_name, plan="free"))
        await svc.touch(*(identify(f"{name} {SCRIPT}", address, first_name=name) for name, address in bad.items()))
        await svc.settled()
        event = definition["trigger"]["event"]
        note = f"{HOSTILE} & {LONG}"
        for customer in [ann, *(f"{name} {SCRIPT}" for name in bad)]:
            await svc.touch(touchpoint(event, customer=customer, at=T - timedelta(minutes=1), note=note))
        await svc.settled()
        await wait_for(lambda: len(svc.sink.messages()) >= 1, what="the mail to the hostile customer")
        await svc.delivered()

        [mail] = svc.sink.messages()  # nothing for the refused addresses, nothing to evil@
        assert mail["To"].addresses[0].addr_spec == "ann@example.test"
        assert mail["To"].addresses[0].display_name == f"Ann {BIDI} {SCRIPT}"
        assert "bcc" not in raw_headers(mail) and "x-injected" not in raw_headers(mail)
        assert len(mail.get_all("To") or []) == 1
        subject = str(mail["Subject"])
        assert "\r" not in subject and "\n" not in subject
        assert subject.startswith("Hi Bcc: evil@example.test X-Injected: 1 ")
        # shown as text; control characters became spaces (the space between two direction marks may
        # be lost: RFC 2047 drops whitespace between encoded words, and Python's folding puts one there)
        assert SCRIPT in subject and IMG in subject and "\u202etxet\u202c" in subject and "\u200f" in subject

        html_part, text_part = mail.get_body(("html",)), mail.get_body(("plain",))
        assert html_part is not None and text_part is not None
        html = html_part.get_content()
        for shown in (first_name.split("\r\n")[0], definition["name"], note, ann):
            assert str(escape(shown)) in html, shown
        assert "<script>" not in html and "<img" not in html
        text = text_part.get_content()
        assert f"{SCRIPT} {IMG} {SQL}" in text and definition["name"] in text and note in text

        # the refused addresses: failed at once as not valid (no retries), never sent
        for name in bad:
            rows = await svc.fetch(
                "SELECT status, attempts, last_error FROM messages WHERE customer_id = $1", f"{name} {SCRIPT}"
            )
            assert [tuple(r) for r in rows] == [("failed", 1, "the recipient address is not valid")], name

        # the API answers the hostile id and names verbatim (JSON) on the customer and member pages
        page = ok(await api.get(f"/v1/customers/{quote(ann, safe='')}/messages"))
        assert [(m["campaign_id"], m["step_name"], m["status"]) for m in page["items"]] == [
            ("hostile", definition["steps"][1]["name"], "sent")
        ]
        members = ok(await api.get("/v1/campaigns/hostile/members"))["items"]
        assert [(m["customer_id"], m["variant"]) for m in members if m["customer_id"] == ann] == [(ann, f"a {SCRIPT}")]
