"""A local SMTP server that keeps every message as an .eml file, so campaigns can be tried without a mail server.

`clm up` runs it (``python -m campaigns.mail_sink``) when ``CLM_SMTP_HOST`` is unset; ``clm mail list``
and ``clm mail show`` read the files. Tests and benchmarks use ``MailSink`` in-process, and can make it
refuse mail with a given code to exercise retries. It never logs addresses: aiosmtpd's own logger,
which does, is held at WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
import logging
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

from clm_shared.settings import Settings

IDENT = "clm-mail-sink"
HOST = "127.0.0.1"
SUFFIX = ".eml"
log = logging.getLogger("campaigns.mail_sink")


def mail_dir(settings: Settings) -> Path:
    return settings.data_dir / "mail"


@dataclass(frozen=True)
class StoredMail:
    id: str
    path: Path
    message: EmailMessage


def read_message(path: Path) -> EmailMessage:
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)  # guaranteed by policy.default
    return parsed


def stored_mail(directory: Path) -> list[StoredMail]:
    """Every stored message, oldest first (ids sort by arrival)."""
    if not directory.is_dir():
        return []
    paths = sorted(p for p in directory.iterdir() if p.suffix == SUFFIX and not p.name.startswith("."))
    return [StoredMail(id=p.stem, path=p, message=read_message(p)) for p in paths]


class SinkHandler:
    """aiosmtpd handler: accepts (or refuses with ``refuse_with`` at ``refuse_at``) and writes each message."""

    def __init__(
        self,
        directory: Path,
        *,
        refuse_with: int | None = None,
        refuse_at: Literal["rcpt", "data"] = "rcpt",
    ) -> None:
        self.directory = directory
        self.refuse_with = refuse_with
        self.refuse_at = refuse_at
        self._counter = itertools.count()

    def _refusal(self, stage: str) -> str | None:
        if self.refuse_with is None or self.refuse_at != stage:
            return None
        kind = "try again later" if 400 <= self.refuse_with < 500 else "refused"
        return f"{self.refuse_with} {kind} (clm mail sink told to refuse)"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if refusal := self._refusal("rcpt"):
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if refusal := self._refusal("data"):
            return refusal
        content = envelope.original_content or envelope.content
        data = content.encode() if isinstance(content, str) else (content or b"")
        message_id = self.next_id()
        await asyncio.to_thread(self._write, message_id, data)
        log.info("stored message %s", message_id)
        return f"250 stored as {message_id}"

    def next_id(self) -> str:
        """Sortable: UTC time to the microsecond, then a counter for messages within the same microsecond."""
        now = datetime.now(UTC)
        return f"{now:%Y%m%d-%H%M%S-%f}-{next(self._counter) % 10000:04d}"

    def _write(self, message_id: str, data: bytes) -> None:
        # Written aside and renamed, so a reader never sees half a message.
        self.directory.mkdir(parents=True, exist_ok=True)
        aside = self.directory / f".{message_id}.tmp"
        aside.write_bytes(data)
        os.replace(aside, self.directory / f"{message_id}{SUFFIX}")


class MailSink:
    """The sink in this event loop: ``async with MailSink(tmp_path) as sink: ... sink.port ... sink.messages()``."""

    def __init__(
        self,
        directory: Path,
        port: int = 0,
        *,
        host: str = HOST,
        refuse_with: int | None = None,
        refuse_at: Literal["rcpt", "data"] = "rcpt",
    ) -> None:
        self.directory = directory
        self.host = host
        self.port = port
        self.handler = SinkHandler(directory, refuse_with=refuse_with, refuse_at=refuse_at)
        self._server: asyncio.Server | None = None

    @property
    def refuse_with(self) -> int | None:
        return self.handler.refuse_with

    @refuse_with.setter
    def refuse_with(self, code: int | None) -> None:
        """Change at any time, e.g. refuse a first try with 451 and accept the retry."""
        self.handler.refuse_with = code

    async def start(self) -> None:
        logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger("mail.log").level))
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="localhost", ident=IDENT, loop=loop), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def messages(self) -> list[EmailMessage]:
        return [stored.message for stored in stored_mail(self.directory)]

    async def __aenter__(self) -> MailSink:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def is_mail_sink(port: int, host: str = HOST, timeout_s: float = 1.0) -> bool:
    """True when our sink (not some other SMTP server) answers on the port: its greeting names it."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    try:
        greeting = await asyncio.wait_for(reader.readline(), timeout_s)
        return greeting.startswith(b"220 ") and IDENT.encode() in greeting
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    directory = mail_dir(settings)
    async with MailSink(directory, settings.smtp_port) as sink:
        log.info("mail sink on smtp://%s:%d, messages in %s (`clm mail list`)", sink.host, sink.port, directory)
        await stop.wait()


def main() -> None:
    from clm_shared.logs import configure_logging
    from clm_shared.settings import load_settings_or_exit

    settings = load_settings_or_exit()
    configure_logging(settings.log_level, settings.log_format, service="mail-sink")
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        raise SystemExit(
            f"error: the mail sink cannot listen on {HOST}:{settings.smtp_port} ({exc.strerror}):"
            " stop the program using it, or set CLM_SMTP_PORT"
        ) from None


if __name__ == "__main__":
    main()
