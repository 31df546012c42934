"""Email through a real SMTP server (the aiosmtpd sink) and webhooks to a real HTTP server, failures classified."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from pydantic import SecretStr

from campaigns.channels import ChannelFailure, PermanentFailure, RecipientRefused, TransientFailure
from campaigns.channels.email import EmailChannel
from campaigns.channels.webhook import WebhookChannel, verify_webhook_signature
from campaigns.definitions import EmailTemplate
from campaigns.mail_sink import MailSink, is_mail_sink, stored_mail
from campaigns.templates import RenderedEmail, render_email
from clm_cli.infra.process import free_port
from clm_shared.settings import Settings
from tests.secret_watch import remember_secret, watch_output
from tests.utils.webhooks import Receiver, webhook_receiver
from tests.waiting import wait_for

TO = "ada@example.org"
UNSUBSCRIBE = "http://127.0.0.1:8004/v1/unsubscribe/abc.def"
RENDERED = RenderedEmail(subject="Welcome", html="<p>Hello</p>", text="Hello")


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[MailSink]:
    async with MailSink(tmp_path / "mail") as sink:
        yield sink


def mail_settings(tmp_path: Path, port: int, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path, smtp_port=port, campaigns_signing_key=SecretStr("s" * 32), **overrides)


def assert_safe(failure: ChannelFailure) -> None:
    assert "@" not in str(failure) and "example" not in str(failure)


async def test_an_email_arrives_with_both_parts_and_the_list_headers(tmp_path: Path, sink: MailSink) -> None:
    channel = EmailChannel(mail_settings(tmp_path, sink.port))
    await channel.send(TO, RENDERED, message_id="send-42", unsubscribe_url=UNSUBSCRIBE)
    [message] = sink.messages()
    assert message["To"] == TO
    assert message["From"] == "clm <noreply@clm.invalid>"
    assert message["Subject"] == "Welcome"
    assert message["Message-ID"] == "<send-42@clm>"
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Date"]
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().strip() == "Hello"
    assert html.get_content().strip() == "<p>Hello</p>"


async def test_a_trait_is_escaped_in_the_html_part_and_verbatim_in_the_text_part(
    tmp_path: Path, sink: MailSink
) -> None:
    template = EmailTemplate(
        subject="Hi {{ customer.first_name }}",
        html="<p>Hi {{ customer.first_name }}</p>",
        text="Hi {{ traits.first_name }}",
    )
    name = "<script>alert(1)</script>"
    rendered = render_email(template, {"customer": {"id": "c-1", "first_name": name}, "traits": {"first_name": name}})
    await EmailChannel(mail_settings(tmp_path, sink.port)).send(
        TO, rendered, message_id="send-43", unsubscribe_url=UNSUBSCRIBE
    )
    [message] = sink.messages()
    html, text = message.get_body(("html",)), message.get_body(("plain",))
    assert html is not None and text is not None
    assert "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt;</p>" in html.get_content()
    assert "<script>" not in html.get_content()
    assert text.get_content().strip() == f"Hi {name}"
    assert message["Subject"] == f"Hi {name}"


async def test_no_address_reaches_the_logs_even_at_debug(
    tmp_path: Path, sink: MailSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await EmailChannel(mail_settings(tmp_path, sink.port)).send(
        TO, RENDERED, message_id="send-49", unsubscribe_url=UNSUBSCRIBE
    )
    assert any(r.name == "campaigns.mail_sink" for r in caplog.records)  # logging did run at debug
    assert "@" not in caplog.text  # aiosmtpd logs envelope addresses at INFO; the sink holds it at WARNING


async def test_the_same_send_retried_keeps_its_message_id(tmp_path: Path, sink: MailSink) -> None:
    channel = EmailChannel(mail_settings(tmp_path, sink.port))
    sink.refuse_with = 451
    with pytest.raises(TransientFailure):
        await channel.send(TO, RENDERED, message_id="send-44", unsubscribe_url=UNSUBSCRIBE)
    assert sink.messages() == []
    sink.refuse_with = None
    await channel.send(TO, RENDERED, message_id="send-44", unsubscribe_url=UNSUBSCRIBE)
    await channel.send(TO, RENDERED, message_id="send-44", unsubscribe_url=UNSUBSCRIBE)
    assert [m["Message-ID"] for m in sink.messages()] == ["<send-44@clm>", "<send-44@clm>"]


@pytest.mark.parametrize(
    ("code", "at", "failure", "says"),
    [
        (451, "rcpt", TransientFailure, "SMTP 451 on RCPT"),
        (550, "rcpt", RecipientRefused, "SMTP 550 on RCPT"),
        (452, "data", TransientFailure, "SMTP 452 on DATA"),
        (554, "data", PermanentFailure, "SMTP 554 on DATA"),
    ],
)
async def test_a_refusal_is_transient_for_4xx_and_permanent_for_5xx(
    tmp_path: Path, code: int, at: Literal["rcpt", "data"], failure: type[ChannelFailure], says: str
) -> None:
    async with MailSink(tmp_path / "mail", refuse_with=code, refuse_at=at) as sink:
        with pytest.raises(ChannelFailure) as raised:
            await EmailChannel(mail_settings(tmp_path, sink.port)).send(
                TO, RENDERED, message_id="send-45", unsubscribe_url=UNSUBSCRIBE
            )
        assert sink.messages() == []
    assert type(raised.value) is failure
    assert str(raised.value) == says
    assert raised.value.__suppress_context__  # the server's reply, which quotes the address, is not chained


async def test_no_server_listening_is_transient(tmp_path: Path) -> None:
    async with MailSink(tmp_path / "mail") as sink:
        port = sink.port
    with pytest.raises(TransientFailure) as raised:
        await EmailChannel(mail_settings(tmp_path, port)).send(
            TO, RENDERED, message_id="send-46", unsubscribe_url=UNSUBSCRIBE
        )
    assert "connection failed" in str(raised.value)
    assert_safe(raised.value)


async def test_a_server_that_never_greets_times_out_as_transient(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TransientFailure) as raised:
            await EmailChannel(mail_settings(tmp_path, port, smtp_timeout_s=0.3)).send(
                TO, RENDERED, message_id="send-47", unsubscribe_url=UNSUBSCRIBE
            )
        assert str(raised.value) == "SMTP timed out after 0.3s"
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_an_address_with_a_line_break_is_refused_before_sending(tmp_path: Path, sink: MailSink) -> None:
    with pytest.raises(PermanentFailure) as raised:
        await EmailChannel(mail_settings(tmp_path, sink.port)).send(
            f"{TO}\r\nBcc: x@example.org", RENDERED, message_id="send-48", unsubscribe_url=UNSUBSCRIBE
        )
    assert_safe(raised.value)
    assert sink.messages() == []


# --- webhooks -------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver("/hooks/clm?token=abc") as state:
        state.status = 204
        yield state


def hook_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path, "webhook_secret": SecretStr("w" * 32), **overrides}
    return Settings(**values)


PAYLOAD = {"campaign": "welcome", "customer": {"id": "c-1"}, "referral_code": "ABCDEFGHJK"}


async def test_a_webhook_is_signed_and_the_signature_verifies(tmp_path: Path, receiver: Receiver) -> None:
    async with WebhookChannel(hook_settings(tmp_path)) as channel:
        await channel.send(receiver.url, PAYLOAD, delivery_id="send-50")
    [(headers, body, _)] = receiver.requests
    assert json.loads(body) == PAYLOAD
    assert headers["content-type"] == "application/json"
    assert headers["x-clm-delivery-id"] == "send-50"
    timestamp, signature = headers["x-clm-timestamp"], headers["x-clm-signature"]
    assert signature.startswith("sha256=")
    now = time.time()
    assert abs(int(timestamp) - now) < 60
    assert verify_webhook_signature("w" * 32, timestamp, body, signature, now=now)
    assert not verify_webhook_signature("x" * 32, timestamp, body, signature, now=now)
    assert not verify_webhook_signature("w" * 32, timestamp, body + b" ", signature, now=now)
    assert not verify_webhook_signature("w" * 32, str(int(timestamp) + 1), body, signature, now=now)
    assert not verify_webhook_signature("w" * 32, timestamp, body, signature, now=now + 301)  # a replay, later
    assert verify_webhook_signature("w" * 32, timestamp, body, signature, now=now + 3600, tolerance_s=7200)
    assert not verify_webhook_signature("w" * 32, "not a number", body, signature, now=now)


async def test_a_shared_client_is_used_and_left_open(tmp_path: Path, receiver: Receiver) -> None:
    async with httpx.AsyncClient() as client:
        channel = WebhookChannel(hook_settings(tmp_path), client)
        await channel.send(receiver.url, PAYLOAD, delivery_id="send-56")
        await channel.aclose()
        assert not client.is_closed
    [(headers, _, _)] = receiver.requests
    assert headers["user-agent"] == "clm-campaigns"


async def test_without_a_webhook_secret_a_generated_one_signs_never_the_signing_key(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = Settings(data_dir=tmp_path, campaigns_signing_key=SecretStr("s" * 32))
    async with WebhookChannel(settings) as channel:
        await channel.send(receiver.url, PAYLOAD, delivery_id="send-51")
    [(headers, body, _)] = receiver.requests
    generated = remember_secret((tmp_path / "webhook-secret").read_text().strip())
    assert (tmp_path / "webhook-secret").stat().st_mode & 0o777 == 0o600
    signature, timestamp = headers["x-clm-signature"], headers["x-clm-timestamp"]
    assert verify_webhook_signature(generated, timestamp, body, signature, now=time.time())
    assert not verify_webhook_signature("s" * 32, timestamp, body, signature, now=time.time())


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (500, TransientFailure),
        (503, TransientFailure),
        (429, TransientFailure),
        (408, TransientFailure),
        (400, PermanentFailure),
        (404, PermanentFailure),
        (410, PermanentFailure),
        (301, PermanentFailure),
    ],
)
async def test_an_error_answer_is_classified(
    tmp_path: Path, receiver: Receiver, status: int, failure: type[ChannelFailure]
) -> None:
    receiver.status = status
    async with WebhookChannel(hook_settings(tmp_path)) as channel:
        with pytest.raises(ChannelFailure) as raised:
            await channel.send(receiver.url, PAYLOAD, delivery_id="send-52")
    assert type(raised.value) is failure
    assert str(raised.value) == f"webhook answered HTTP {status}"


async def test_a_slow_receiver_times_out_as_transient(tmp_path: Path, receiver: Receiver) -> None:
    receiver.hang = threading.Event()
    async with WebhookChannel(hook_settings(tmp_path, webhook_timeout_s=0.3)) as channel:
        with pytest.raises(TransientFailure) as raised:
            await channel.send(receiver.url, PAYLOAD, delivery_id="send-53")
    assert str(raised.value) == "webhook timed out after 0.3s"
    await wait_for(lambda: len(receiver.requests) == 1, what="the request to have reached the receiver")


async def test_a_closed_port_is_transient_and_the_url_stays_out_of_the_message(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with WebhookChannel(hook_settings(tmp_path)) as channel:
        with pytest.raises(TransientFailure) as raised:
            await channel.send(f"http://127.0.0.1:{port}/x?token=secret-ish", PAYLOAD, delivery_id="send-54")
    assert "token" not in str(raised.value) and str(port) not in str(raised.value)


async def test_a_url_that_is_not_http_is_permanent(tmp_path: Path) -> None:
    async with WebhookChannel(hook_settings(tmp_path)) as channel:
        with pytest.raises(PermanentFailure):
            await channel.send("ftp://127.0.0.1/x", PAYLOAD, delivery_id="send-55")


# --- the sink as `clm up` runs it -------------------------------------------------------------------


async def test_the_sink_process_stores_what_it_receives_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CLM_DATA_DIR": str(tmp_path), "CLM_SMTP_PORT": str(port)}
    env.pop("CLM_SMTP_HOST", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaigns.mail_sink",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await wait_for(lambda: is_mail_sink(port), timeout_s=30, what="the sink to greet")
        await EmailChannel(mail_settings(tmp_path, port)).send(
            TO, RENDERED, message_id="send-60", unsubscribe_url=UNSUBSCRIBE
        )
        [stored] = stored_mail(tmp_path / "mail")
        assert stored.message["Message-ID"] == "<send-60@clm>"
        assert not [p for p in (tmp_path / "mail").iterdir() if p.suffix != ".eml"]  # nothing left aside
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    watch_output("mail sink log", output.decode())  # the suite's secret watch searches it too
    assert process.returncode == 0
    assert f"smtp://127.0.0.1:{port}" in output.decode()
    assert "stored message" in output.decode()


async def test_the_sink_process_names_the_setting_when_its_port_is_taken(tmp_path: Path) -> None:
    async with MailSink(tmp_path / "other") as taken:
        env = {**os.environ, "CLM_DATA_DIR": str(tmp_path), "CLM_SMTP_PORT": str(taken.port)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "campaigns.mail_sink", env=env, stderr=asyncio.subprocess.PIPE
        )
        _, error = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert "CLM_SMTP_PORT" in error.decode()
