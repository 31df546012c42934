"""`clm mail`: read what campaigns sent to the local mail sink (`<data dir>/mail/`), on the operator's terminal."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from campaigns.mail_sink import StoredMail, mail_dir, stored_mail
from clm_shared.settings import load_settings_or_exit

mail_app = typer.Typer(help="Email caught by the local mail sink (when CLM_SMTP_HOST is unset).", no_args_is_help=True)
console = Console()

DirOption = Annotated[
    Path | None, typer.Option("--dir", help="Folder of .eml files; default <data dir>/mail.", show_default=False)
]
SHOWN_HEADERS = ("Date", "From", "To", "Subject", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post")


def _directory(given: Path | None) -> Path:
    return given if given is not None else mail_dir(load_settings_or_exit())


@mail_app.command("list")
def list_mail(
    directory: DirOption = None,
    last: Annotated[int, typer.Option(min=1, help="Show only the newest N messages.")] = 50,
) -> None:
    """The newest messages: id, date, recipient, subject."""
    folder = _directory(directory)
    messages = stored_mail(folder)
    if not messages:
        console.print(f"no messages in {folder}", highlight=False)
        return
    table = Table("id", "date", "to", "subject")
    for stored in messages[-last:]:
        message = stored.message
        table.add_row(stored.id, _date(message), str(message["To"] or ""), str(message["Subject"] or ""))
    console.print(table)
    if len(messages) > last:
        console.print(f"{len(messages) - last} older messages not shown (--last)", highlight=False)


@mail_app.command("show")
def show_mail(
    message_id: Annotated[str, typer.Argument(metavar="ID", help="An id from `clm mail list`, or its unique prefix.")],
    directory: DirOption = None,
    html: Annotated[bool, typer.Option("--html", help="Print the HTML part instead of the text part.")] = False,
) -> None:
    """One message's headers and its text (or HTML) part."""
    folder = _directory(directory)
    stored = _find(stored_mail(folder), message_id, folder)
    message = stored.message
    for name in SHOWN_HEADERS:
        if message[name] is not None:
            console.print(f"[bold]{name}:[/bold] {message[name]}", highlight=False, markup=True, soft_wrap=True)
    console.print()
    body = message.get_body(("html",) if html else ("plain",))
    if body is None:
        console.print(f"(no {'HTML' if html else 'text'} part)")
        return
    # markup off: a template's own brackets must print as they are
    console.print(str(body.get_content()), markup=False, highlight=False, soft_wrap=True)


def _date(message: EmailMessage) -> str:
    header = message["Date"]
    when = getattr(header, "datetime", None)  # None when the header is missing or unparsable
    return f"{when:%Y-%m-%d %H:%M:%S %z}" if when is not None else str(header or "")


def _find(messages: list[StoredMail], message_id: str, folder: Path) -> StoredMail:
    exact = [m for m in messages if m.id == message_id]
    matches = exact or [m for m in messages if m.id.startswith(message_id)]
    if len(matches) == 1:
        return matches[0]
    what = "matches several messages" if matches else "is not a message"
    console.print(f"error: {message_id} {what} in {folder}: `clm mail list` shows the ids", highlight=False)
    raise typer.Exit(1)
