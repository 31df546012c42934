"""Campaign definitions: the shipped files, errors that name the field, durations, and the shipped templates."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from campaigns.definitions import (
    SHIPPED_DIR,
    Campaign,
    DefinitionError,
    EmailTemplate,
    SendStep,
    SplitStep,
    WaitForEventStep,
    WaitStep,
    format_duration,
    load_folder,
    parse_campaign,
    parse_duration,
    shipped_campaigns,
)
from clm_shared.schemas.lifecycle import Health, Stage

EXPECTED_TRIGGERS: dict[str, tuple[str, str]] = {
    "welcome": ("stage", Stage.ENGAGEMENT),
    "abandoned-cart": ("event", "Checkout Started"),
    "post-purchase": ("stage", Stage.CONVERSION),
    "recommendations": ("stage", Stage.RETENTION),
    "loyalty-invite": ("stage", Stage.LOYALTY),
    "referral-invite": ("stage", Stage.ADVOCACY),
    "at-risk-nudge": ("health", Health.AT_RISK),
    "win-back": ("health", Health.CHURNED),
}

EMAIL = {"subject": "Hi", "html": "<p>Hi</p>", "text": "Hi"}


def _campaign(steps: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"id": "test", "name": "Test", "trigger": {"event": "Signed Up"}, "steps": steps, **fields}


def _send(**fields: Any) -> dict[str, Any]:
    return {"type": "send", "name": "hello", "template": EMAIL, **fields}


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(DefinitionError) as info:
        parse_campaign(data)
    return str(info.value)


# --- the shipped files ---------------------------------------------------------------------------------------------


def _shipped() -> dict[str, Campaign]:
    return {campaign.id: campaign for campaign in shipped_campaigns()}


def test_every_shipped_campaign_loads_with_its_id_and_trigger() -> None:
    shipped = _shipped()
    assert set(shipped) == set(EXPECTED_TRIGGERS)
    assert len(list(SHIPPED_DIR.glob("*.yaml"))) == len(EXPECTED_TRIGGERS)
    for campaign_id, (kind, value) in EXPECTED_TRIGGERS.items():
        trigger = shipped[campaign_id].trigger
        assert trigger.kind == kind, campaign_id
        actual = {"stage": trigger.stage_entered, "health": trigger.health_changed_to, "event": trigger.event}[kind]
        assert actual == value, campaign_id


def test_each_shipped_file_is_named_after_its_campaign() -> None:
    for path in SHIPPED_DIR.glob("*.yaml"):
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["id"] == path.stem


def test_shipped_campaigns_are_marketing_with_the_default_holdout_and_no_audience() -> None:
    for campaign in _shipped().values():
        assert campaign.transactional is False, campaign.id
        assert campaign.holdout_percent is None, campaign.id
        assert campaign.audience == [], campaign.id


def test_shipped_send_step_names() -> None:
    names = {campaign.id: [step.name for _, step in campaign.send_steps()] for campaign in _shipped().values()}
    assert names == {
        "welcome": ["welcome"],
        "abandoned-cart": ["reminder", "second-reminder"],
        "post-purchase": ["thank-you", "feedback-request"],
        "recommendations": ["recommendations"],
        "loyalty-invite": ["invitation"],
        "referral-invite": ["invitation"],
        "at-risk-nudge": ["nudge"],
        "win-back": ["offer"],
    }


def test_abandoned_cart_waits_for_the_order_then_splits_and_reminds_twice() -> None:
    campaign = _shipped()["abandoned-cart"]
    assert campaign.exit_on == []
    first, split, reminder, second_wait, second = campaign.steps
    assert isinstance(first, WaitForEventStep)
    assert (first.event, first.match, first.timeout) == ("Order Completed", ["checkout_id"], timedelta(hours=1))
    assert (first.on_event, first.on_timeout) == ("exit", "continue")
    assert isinstance(split, SplitStep) and split.variants == {"A": 50, "B": 50}
    assert isinstance(reminder, SendStep) and reminder.name == "reminder" and not reminder.variant_templates
    assert isinstance(second_wait, WaitForEventStep)
    assert (second_wait.event, second_wait.match) == ("Order Completed", ["checkout_id"])
    assert (second_wait.timeout, second_wait.on_event) == (timedelta(hours=24), "exit")
    assert isinstance(second, SendStep) and second.name == "second-reminder"
    coupon = second.template_for("B")
    assert coupon is not None and coupon is not second.template
    assert "COMEBACK10" in coupon.html and "COMEBACK10" in coupon.text
    assert second.template_for("A") is second.template


def test_post_purchase_waits_a_week_before_asking_for_feedback() -> None:
    steps = _shipped()["post-purchase"].steps
    assert isinstance(steps[1], WaitStep) and steps[1].duration == timedelta(days=7)


def test_shipped_includes() -> None:
    shipped = _shipped()
    assert shipped["recommendations"].send_steps()[0][1].include == ["recommendations"]
    assert shipped["referral-invite"].send_steps()[0][1].include == ["referral_code"]


# --- errors name the field ----------------------------------------------------------------------------------------


def test_a_bad_duration_names_the_step_and_field() -> None:
    message = _error(_campaign([_send(), {"type": "wait", "duration": "soon"}]))
    assert message.startswith("steps.1.duration: ")
    assert ".wait" not in message


def test_a_bad_timeout_names_the_step_and_field() -> None:
    message = _error(_campaign([{"type": "wait_for_event", "event": "Order Completed", "timeout": "later"}, _send()]))
    assert message.startswith("steps.0.timeout: ")


def test_an_email_step_without_a_template_names_the_template() -> None:
    message = _error(_campaign([{"type": "send", "name": "hello"}]))
    assert message.startswith("steps.0.template: ")


def test_a_template_missing_a_part_names_the_part() -> None:
    message = _error(_campaign([_send(template={"subject": "Hi", "html": "<p>Hi</p>"})]))
    assert message == "steps.0.template.text: Field required"


def test_a_webhook_step_without_a_url_names_the_url() -> None:
    assert _error(_campaign([_send(channel="webhook", template=None)])).startswith("steps.0.url: ")


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (_campaign([_send()], colour="blue"), "colour"),
        (_campaign([_send(colour="blue")]), "steps.0.colour"),
        (_campaign([_send(template={**EMAIL, "colour": "blue"})]), "steps.0.template.colour"),
        (_campaign([_send()], trigger={"event": "Signed Up", "colour": "blue"}), "trigger.colour"),
    ],
)
def test_an_unknown_key_is_named(data: dict[str, Any], path: str) -> None:
    assert _error(data).startswith(f"{path}: ")


def test_a_trigger_with_two_kinds_is_refused() -> None:
    message = _error(_campaign([_send()], trigger={"event": "Signed Up", "stage_entered": "engagement"}))
    assert message.startswith("trigger: ")
    assert "exactly one" in message


def test_an_audience_condition_names_its_value() -> None:
    message = _error(_campaign([_send()], audience=[{"field": "traits.plan", "op": "in", "value": "pro"}]))
    assert message.startswith("audience.0.value: ")


def test_a_variant_template_without_an_earlier_split_names_the_step() -> None:
    message = _error(_campaign([_send(variant_templates={"B": EMAIL})]))
    assert message.startswith("steps.0: ")
    assert "'B'" in message


def test_a_variant_from_a_later_split_is_refused_too() -> None:
    steps = [_send(only_variant="B"), {"type": "split", "variants": {"A": 1, "B": 1}}]
    assert _error(_campaign(steps)).startswith("steps.0: ")


def test_an_unknown_step_type_names_the_step() -> None:
    assert _error(_campaign([_send(), {"type": "teleport"}])).startswith("steps.1: ")


def test_a_variant_named_like_a_step_type_keeps_its_name_in_the_path() -> None:
    steps = [
        {"type": "split", "variants": {"send": 1, "wait": 1}},
        _send(variant_templates={"send": {"subject": "Hi", "html": "<p>Hi</p>"}}),
    ]
    assert _error(_campaign(steps)) == "steps.1.variant_templates.send.text: Field required"


def test_the_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(_campaign([{"type": "wait", "duration": "soon"}])))
    with pytest.raises(DefinitionError, match=r"^broken\.yaml: steps\.0\.duration: "):
        load_folder(tmp_path)


def test_a_file_with_what_jsonb_cannot_keep_is_refused_naming_the_field(tmp_path: Path) -> None:
    """YAML spells NaN, infinity and a NUL too (``.nan``, ``.inf``, ``"\\0"``): refused as through the API."""
    (tmp_path / "odd.yaml").write_text(
        'id: odd\nname: "a\\0b"\ntrigger: {event: E}\n'
        "audience: [{field: traits.x, op: gt, value: .nan}, {field: traits.y, op: lt, value: -.inf}]\n"
        "steps: [{type: split, variants: {a: 1, b: 100000000000000000000000}},"
        " {type: send, name: s, template: {subject: s, html: h, text: t}}]\n"
    )
    with pytest.raises(DefinitionError) as info:
        load_folder(tmp_path)
    assert str(info.value) == (
        "odd.yaml: name: contains the NUL character (U+0000), which cannot be stored;"
        " audience.0.value: a finite number is required; audience.1.value: a finite number is required;"
        " steps.0.variants.b: an integer within the signed 64-bit range is required"
    )


def test_a_folder_with_two_files_of_the_same_id_is_refused(tmp_path: Path) -> None:
    for name in ("one.yaml", "two.yaml"):
        (tmp_path / name).write_text(yaml.safe_dump(_campaign([_send()], id="twice")))
    with pytest.raises(DefinitionError, match="'twice'"):
        load_folder(tmp_path)


def test_an_operator_folder_replaces_a_shipped_campaign_by_id(tmp_path: Path) -> None:
    (tmp_path / "welcome.yaml").write_text(
        yaml.safe_dump(_campaign([_send()], id="welcome", trigger={"stage_entered": "engagement"}))
    )
    campaigns = {c.id: c for c in shipped_campaigns(tmp_path)}
    assert set(campaigns) == set(EXPECTED_TRIGGERS)
    assert campaigns["welcome"].name == "Test"


# --- durations ----------------------------------------------------------------------------------------------------

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@given(amount=st.integers(min_value=0, max_value=260), unit=st.sampled_from(sorted(UNITS)))
def test_a_whole_duration_parses_and_formats_back(amount: int, unit: str) -> None:
    parsed = parse_duration(f"{amount}{unit}")
    assert parsed == timedelta(seconds=amount * UNITS[unit])
    formatted = format_duration(parsed)
    assert re.fullmatch(r"\d+[smhdw]", formatted)
    assert parse_duration(formatted) == parsed


@given(seconds=st.integers(min_value=0, max_value=260 * 7 * 86400))
def test_format_duration_picks_the_largest_whole_unit(seconds: int) -> None:
    formatted = format_duration(timedelta(seconds=seconds))
    assert parse_duration(formatted) == timedelta(seconds=seconds)
    number, unit = int(formatted[:-1]), formatted[-1]
    larger = [u for u, size in UNITS.items() if size > UNITS[unit]]
    assert seconds == 0 or all(number * UNITS[unit] % UNITS[u] for u in larger)


@pytest.mark.parametrize("value", ["soon", "", "1y", "-1h", "h", "1 hour", -5, True, None])
def test_a_bad_duration_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(("value", "expected"), [("90s", 90), (" 1.5h ", 5400), (3600, 3600), ("2w", 1_209_600)])
def test_duration_examples(value: object, expected: int) -> None:
    assert parse_duration(value) == timedelta(seconds=expected)


# --- the shipped templates ----------------------------------------------------------------------------------------

HOSTILE = '<b>"x"&'
UNSUBSCRIBE = "https://clm.example/unsubscribe?token=abc&c=1"
# Strict: a shipped template may not lean on a value the renderer does not provide.
HTML_ENV = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
TEXT_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined)


def _templates() -> list[tuple[str, EmailTemplate]]:
    found = []
    for campaign in shipped_campaigns():
        for _, step in campaign.send_steps():
            if step.template is not None:
                found.append((f"{campaign.id}/{step.name}", step.template))
            found += [(f"{campaign.id}/{step.name}/{v}", t) for v, t in sorted(step.variant_templates.items())]
    return found


TEMPLATES = _templates()


def _context(*, first_name: str | None = HOSTILE, cart: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    customer: dict[str, Any] = {"id": "user-1", "email": "x@example.com"}
    if first_name is not None:
        customer["first_name"] = first_name
    return {
        "customer": customer,
        "traits": {key: value for key, value in customer.items() if key != "id"},
        "event": {"name": "Checkout Started", "time": "2026-11-25T12:00:00Z", "properties": cart or {}},
        "campaign": {"id": "test", "name": "Test"},
        "variant": None,
        "unsubscribe_url": UNSUBSCRIBE,
        "referral_code": "FRIEND-42",
        "recommendations": [{"product_id": "p1", "name": "Tea & <Biscuits>"}, {"product_id": "p2", "name": ""}],
        **extra,
    }


def _render(template: EmailTemplate, context: dict[str, Any]) -> tuple[str, str, str]:
    return (
        TEXT_ENV.from_string(template.subject).render(context),
        HTML_ENV.from_string(template.html).render(context),
        TEXT_ENV.from_string(template.text).render(context),
    )


def test_every_template_is_collected() -> None:
    # ten email send steps, and the coupon variant of the second cart reminder
    assert len(TEMPLATES) == 11


@pytest.mark.parametrize(("where", "template"), TEMPLATES, ids=[where for where, _ in TEMPLATES])
def test_a_shipped_template_escapes_a_hostile_name_in_html_only(where: str, template: EmailTemplate) -> None:
    subject, html, text = _render(template, _context())
    assert HOSTILE not in html
    assert str(escape(HOSTILE)) in html
    assert HOSTILE in text
    assert "\n" not in subject.strip()


@pytest.mark.parametrize(("where", "template"), TEMPLATES, ids=[where for where, _ in TEMPLATES])
def test_a_shipped_template_ends_with_an_unsubscribe_link(where: str, template: EmailTemplate) -> None:
    _, html, text = _render(template, _context())
    link = f'<a href="{escape(UNSUBSCRIBE)}">Unsubscribe</a>'
    assert link in html
    assert html.rindex(link) == html.rindex("<a ")
    assert html.rstrip().endswith(link + "</p>")
    assert text.strip().splitlines()[-1] == f"Unsubscribe: {UNSUBSCRIBE}"


@pytest.mark.parametrize(("where", "template"), TEMPLATES, ids=[where for where, _ in TEMPLATES])
@pytest.mark.parametrize("first_name", [None, ""])
def test_a_shipped_template_greets_a_customer_without_a_name(
    where: str, template: EmailTemplate, first_name: str | None
) -> None:
    subject, html, text = _render(template, _context(first_name=first_name, recommendations=[], referral_code=None))
    for part in (subject, html, text):
        assert "None" not in part
    assert "Hi there," in html and "Hi there," in text


@pytest.mark.parametrize(("where", "template"), TEMPLATES, ids=[where for where, _ in TEMPLATES])
@pytest.mark.parametrize("full", [True, False])
def test_a_shipped_text_part_is_tidy(where: str, template: EmailTemplate, full: bool) -> None:
    cart = {"products": [{"name": "Mug"}], "total": 9} if full else {}
    recommendations = _context()["recommendations"] if full else []
    _, html, text = _render(template, _context(first_name="Ann", cart=cart, recommendations=recommendations))
    assert text.startswith("Hi Ann,\n\n")
    assert "\n\n\n" not in text and not re.search(r"[ \t]$", text, re.MULTILINE)
    assert html.startswith("<p>Hi Ann,</p>\n")


def _one(campaign_id: str, step_name: str, variant: str | None = None) -> EmailTemplate:
    step = next(step for _, step in _shipped()[campaign_id].send_steps() if step.name == step_name)
    template = step.template_for(variant)
    assert template is not None
    return template


def test_the_cart_reminder_lists_the_cart() -> None:
    cart = {
        "checkout_id": "c-1",
        "total": 42.5,
        "currency": "EUR",
        "products": [{"name": "Mug <large>", "quantity": 2}, {"product_id": "p9"}],
    }
    _, html, text = _render(_one("abandoned-cart", "reminder"), _context(cart=cart))
    assert "Mug &lt;large&gt; &times; 2" in html and "Mug <large> x 2" in text
    assert "An item" in html and "An item" in text
    assert "42.5 EUR" in html and "42.5 EUR" in text
    _, _, text = _render(_one("abandoned-cart", "reminder"), _context(first_name="Ann", cart=cart))
    assert "ready when you are.\n\nIn your cart:\n- Mug <large> x 2\n- An item\n\nCart total: 42.5 EUR\n\n" in text


def test_the_cart_reminder_without_cart_details() -> None:
    _, html, text = _render(_one("abandoned-cart", "reminder"), _context(cart={}))
    assert "<ul>" not in html and "total" not in text


def test_the_b_variant_of_the_second_reminder_has_the_coupon() -> None:
    _, html_b, _ = _render(_one("abandoned-cart", "second-reminder", "B"), _context())
    _, html_a, _ = _render(_one("abandoned-cart", "second-reminder", "A"), _context())
    assert "COMEBACK10" in html_b and "COMEBACK10" not in html_a


def test_recommendations_are_listed_escaped_with_a_fallback_name() -> None:
    _, html, text = _render(_one("recommendations", "recommendations"), _context())
    assert "<li>Tea &amp; &lt;Biscuits&gt;</li>" in html and "- Tea & <Biscuits>" in text
    assert "<li>p2</li>" in html and "- p2" in text


def test_recommendations_without_any_fall_back() -> None:
    _, html, text = _render(_one("recommendations", "recommendations"), _context(recommendations=[]))
    assert "<li>" not in html and "what's new" in text


def test_the_referral_invite_shows_the_code() -> None:
    _, html, text = _render(_one("referral-invite", "invitation"), _context())
    assert "<strong>FRIEND-42</strong>" in html and "FRIEND-42" in text


def test_the_win_back_offer_has_a_code() -> None:
    _, html, text = _render(_one("win-back", "offer"), _context())
    assert "WELCOMEBACK15" in html and "WELCOMEBACK15" in text


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("template", "steps.0.template.html: line 1:"),
        ("variant_templates", "steps.1.variant_templates.B.text: line 1:"),
    ],
)
def test_a_template_that_does_not_compile_is_refused_with_its_part_named(where: str, expected: str) -> None:
    good = {"subject": "Hi", "html": "<p>Hi</p>", "text": "Hi"}
    steps: list[dict[str, Any]] = [
        {"type": "split", "variants": {"A": 1, "B": 1}},
        {"type": "send", "name": "hello", "template": good},
    ]
    if where == "template":
        steps = [{"type": "send", "name": "hello", "template": {**good, "html": "{% if x %}unclosed"}}]
    else:
        steps[1]["variant_templates"] = {"B": {**good, "text": "{{ }}"}}
    data = {"id": "hello", "name": "Hello", "trigger": {"event": "Signed Up"}, "steps": steps}
    with pytest.raises(DefinitionError) as caught:
        parse_campaign(data)
    assert str(caught.value).startswith(expected)


@pytest.mark.parametrize("value", ["261w", "1000000000d", "1e400s", "P9999Y"])
def test_a_duration_past_five_years_is_refused_not_left_to_overflow_later(value: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)
