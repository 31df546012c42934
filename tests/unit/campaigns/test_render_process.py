"""Templates rendered in a child process: the same emails, and a template's memory and time bounded."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from campaigns.channels import TransientFailure
from campaigns.render_process import RenderProcess
from campaigns.templates import TemplateError, render_email
from tests.unit.campaigns.test_templates import context, template

DOUBLING_MACRO = "{% macro twice(s, n) %}{% if n %}{{ twice(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}"


@pytest.fixture
def renderer() -> Iterator[RenderProcess]:
    process = RenderProcess(budget_bytes=128 * 1024 * 1024, timeout_s=3.0)
    yield process
    process.close()


async def test_an_email_is_rendered_as_in_process(renderer: RenderProcess) -> None:
    email = template(
        subject="{{ campaign.name }}\r\nBcc: x for {{ customer.first_name }}",
        html="{% for r in recommendations %}<li>{{ r.name }}</li>{% endfor %}{{ customer.first_name }}",
        text="{{ event.properties.total }} {{ unsubscribe_url }}",
    )
    values = context(first_name="<Ada>")
    assert await renderer.render_email(email, values) == render_email(email, values)


@pytest.mark.parametrize(
    ("part", "source"),
    [
        ("html", "{{ 'x' * 10**9 }}"),
        ("text", DOUBLING_MACRO + "{{ twice('x', 40) }}"),
        ("subject", "{{ ['x'] * 10**9 }}"),
    ],
)
async def test_a_template_that_needs_too_much_memory_fails_and_the_next_email_renders(
    renderer: RenderProcess, part: str, source: str
) -> None:
    with pytest.raises(TemplateError) as raised:
        await renderer.render_email(template(**{part: source}), context())
    assert raised.value.part == part
    assert "MemoryError" in str(raised.value)
    assert (await renderer.render_email(template(), context(first_name="Ada"))).subject == "Hi Ada"


async def test_a_template_that_takes_too_long_fails_then_fails_at_once_and_the_next_email_renders(
    renderer: RenderProcess,
) -> None:
    endless = template(text="{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    with pytest.raises(TemplateError) as raised:
        await renderer.render_email(endless, context())
    assert (raised.value.part, raised.value.detail) == ("text", "over the limit: takes longer than 3 s")
    assert (await renderer.render_email(template(), context(first_name="Ada"))).subject == "Hi Ada"
    child = renderer._process
    with pytest.raises(TemplateError) as again:  # known: refused without rendering it again
        await renderer.render_email(endless, context(first_name="Bo"))
    assert again.value.detail == raised.value.detail and renderer._process is child


async def test_a_part_larger_than_any_email_is_refused(renderer: RenderProcess) -> None:
    with pytest.raises(TemplateError) as raised:
        await renderer.render_email(template(html="{{ 'x' * (3 * 1024 * 1024) }}"), context())
    assert (raised.value.part, raised.value.detail) == ("html", "over the limit: renders more than 2 MiB")


async def test_the_child_outlives_a_signal_to_its_process_group(renderer: RenderProcess) -> None:
    await renderer.render_email(template(), context(first_name="Ada"))
    child = renderer._process
    assert child is not None and child.pid is not None
    os.kill(child.pid, signal.SIGTERM)  # what `clm down` sends the whole group; the parent ends it
    os.kill(child.pid, signal.SIGINT)
    assert (await renderer.render_email(template(), context(first_name="Bo"))).subject == "Hi Bo"
    assert renderer._process is child and child.is_alive()


async def test_endless_recursion_is_a_template_error(renderer: RenderProcess) -> None:
    endless = "{% macro deeper(n) %}{{ deeper(n + 1) }}{% endmacro %}{{ deeper(0) }}"
    with pytest.raises(TemplateError) as raised:
        await renderer.render_email(template(html=endless), context())
    assert raised.value.part == "html" and "RecursionError" in str(raised.value)


async def test_a_child_that_died_between_emails_is_replaced(renderer: RenderProcess) -> None:
    await renderer.render_email(template(), context(first_name="Ada"))
    assert renderer._process is not None
    renderer._process.kill()
    renderer._process.join()
    assert (await renderer.render_email(template(), context(first_name="Bo"))).subject == "Hi Bo"


def _exits_at_once(conn: Connection, budget: int) -> None:
    """A child that cannot serve: it ends before reading anything."""


async def test_a_child_that_cannot_render_at_all_makes_the_send_a_transient_failure() -> None:
    renderer = RenderProcess(serve=_exits_at_once)
    try:
        with pytest.raises(TransientFailure):
            await renderer.render_email(template(), context(first_name="Ada"))
    finally:
        renderer.close()
