"""`clm keys`: create, list and revoke the write keys that shops send events with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.db import service_schema
from clm_shared.migrations import apply_migrations
from clm_shared.operator_commands import run_on_database
from clm_shared.settings import Settings
from ingest.app import MIGRATIONS
from ingest.keys import KeyNameTaken, UnknownKey, create_key, list_keys, revoke_key

keys_app = typer.Typer(help="Write keys for the ingest API.", no_args_is_help=True)
console = Console()
T = TypeVar("T")


async def _migrated(settings: Settings, engine: AsyncEngine) -> AsyncEngine:
    # Keys can be made before ingest ever ran: its tables are created here if needed.
    await apply_migrations(engine, script_location=MIGRATIONS, schema=service_schema(settings, "ingest"))
    return engine


def _with_engine(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    return run_on_database(
        work, schema=lambda settings: service_schema(settings, "ingest"), prepare=_migrated, console=console
    )


@keys_app.command("create")
def create(name: str = typer.Option(..., "--name", help="A name for the source, e.g. shop-web.")) -> None:
    """Create a write key; the key is printed on the last line and cannot be shown again."""
    try:
        key = _with_engine(lambda engine: create_key(engine, name=name))
    except KeyNameTaken as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"write key [bold]{name}[/bold] created; send it as the HTTP Basic user name:", highlight=False)
    print(key)


@keys_app.command("list")
def list_() -> None:
    """List write keys (names and dates; keys themselves are stored only as hashes)."""
    keys = _with_engine(list_keys)
    table = Table("name", "created", "revoked")
    for key in keys:
        table.add_row(
            key.name, f"{key.created_at:%Y-%m-%d %H:%M}", f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else ""
        )
    console.print(table)


@keys_app.command("revoke")
def revoke(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Revoke a write key; ingest refuses it within 10 seconds."""
    try:
        _with_engine(lambda engine: revoke_key(engine, name=name))
    except UnknownKey as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"revoked {name}")
