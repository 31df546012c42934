"""Email templates: sandboxed, lenient about missing traits, strict about syntax and header injection."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from campaigns.definitions import EmailTemplate
from campaigns.templates import TemplateError, check_template, render_email


def template(subject: str = "Hi {{ customer.first_name }}", html: str = "<p>x</p>", text: str = "x") -> EmailTemplate:
    return EmailTemplate(subject=subject, html=html, text=text)


def context(**traits: Any) -> dict[str, Any]:
    """The fixed context contract the delivery code builds."""
    return {
        "customer": {"id": "c-1", **traits},
        "traits": traits,
        "event": {"name": "Order Completed", "time": "2026-01-01T00:00:00+00:00", "properties": {"total": 42}},
        "campaign": {"id": "welcome", "name": "Welcome"},
        "variant": "b",
        "unsubscribe_url": "http://127.0.0.1:8004/v1/unsubscribe/tok?a=1&b=2",
        "referral_code": "ABCDEFGHJK",
        "recommendations": [{"product_id": "p1", "name": "Mug"}, {"product_id": "p2", "name": "Tea"}],
    }


def test_every_context_key_is_usable_in_a_template() -> None:
    rendered = render_email(
        template(
            subject="{{ campaign.name }} for {{ customer.first_name }} ({{ variant }})",
            html="{% for r in recommendations %}<li>{{ r.name }}</li>{% endfor %}{{ referral_code }}",
            text="{{ event.name }} {{ event.properties.total }} {{ traits.first_name }} {{ unsubscribe_url }}",
        ),
        context(first_name="Ada"),
    )
    assert rendered.subject == "Welcome for Ada (b)"
    assert rendered.html == "<li>Mug</li><li>Tea</li>ABCDEFGHJK"
    assert rendered.text == "Order Completed 42 Ada http://127.0.0.1:8004/v1/unsubscribe/tok?a=1&b=2"


def test_html_is_escaped_but_subject_and_text_are_verbatim() -> None:
    body = "{{ customer.first_name }}"
    rendered = render_email(template(subject=body, html=body, text=body), context(first_name="<script>&"))
    assert rendered.html == "&lt;script&gt;&amp;"
    assert rendered.text == "<script>&"
    assert rendered.subject == "<script>&"


def test_missing_traits_render_empty_even_when_chained() -> None:
    rendered = render_email(
        template(subject="Hi {{ customer.nickname }}!", html="[{{ traits.address.city }}]", text="{{ nothing }}."),
        context(),
    )
    assert (rendered.subject, rendered.html, rendered.text) == ("Hi !", "[]", ".")


def test_line_breaks_in_the_subject_cannot_inject_headers() -> None:
    name = "A\r\nBcc: x\u2028y\x00z"
    rendered = render_email(template(subject="Hi {{ customer.first_name }}"), context(first_name=name))
    assert rendered.subject == "Hi A Bcc: x y z"


@pytest.mark.parametrize("part", ["subject", "html", "text"])
def test_a_syntax_error_names_the_part(part: str) -> None:
    broken = template(**{part: "Hello {% if %}"})
    with pytest.raises(TemplateError) as raised:
        check_template(broken)
    assert raised.value.part == part
    assert str(raised.value).startswith(f"{part}: line 1")
    assert isinstance(raised.value, ValueError)


def test_a_valid_template_passes_the_check() -> None:
    check_template(template(html="{% for r in recommendations %}{{ r.name }}{% endfor %}"))


def test_the_sandbox_refuses_unsafe_calls_as_a_template_error() -> None:
    with pytest.raises(TemplateError) as raised:
        render_email(template(text="{{ recommendations.append(1) }}"), context())
    assert raised.value.part == "text"


def test_a_render_error_does_not_quote_an_address() -> None:
    with pytest.raises(TemplateError) as raised:
        # str.format of "{ada@example.org}" raises KeyError('ada@example'), quoting the address
        html = '{{ ("{" ~ customer.email ~ "}").format() }}'
        render_email(template(html=html), context(email="ada@example.org"))
    assert raised.value.part == "html"
    assert str(raised.value) == "html: KeyError: '<address>'"


def test_an_arithmetic_error_is_a_template_error() -> None:
    with pytest.raises(TemplateError) as raised:
        render_email(template(subject="{{ 1 / 0 }}"), context())
    assert raised.value.part == "subject"


def test_internals_are_not_reachable() -> None:
    rendered = render_email(template(text="{{ ''.__class__.__mro__ }}{{ customer.__class__ }}"), context())
    assert rendered.text == ""


@pytest.mark.parametrize(
    "source", ["{{ 'x' * 10**9 }}", "{{ 'x'|center(10**9) }}", "{% if 'x' * 10**9 %}y{% endif %}", "{{ 9 ** 10**7 }}"]
)
def test_saving_a_template_computes_nothing(source: str) -> None:
    tracemalloc.start()
    try:
        check_template(template(html=source))  # compiled in the service's own process: must stay cheap
        assert tracemalloc.get_traced_memory()[1] < 5 * 1024 * 1024
    finally:
        tracemalloc.stop()


def test_autoescape_takes_only_a_literal() -> None:
    with pytest.raises(TemplateError, match="autoescape takes true or false"):
        check_template(template(html="{% autoescape 'x' * 10**9 %}a{% endautoescape %}"))
    rendered = render_email(template(html="{% autoescape false %}{{ '<b>' }}{% endautoescape %}{{ '<i>' }}"), context())
    assert rendered.html == "<b>&lt;i&gt;"
