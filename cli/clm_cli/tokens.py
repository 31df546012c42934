"""`clm tokens`: create, list and revoke the API tokens that every service's HTTP API requires."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.access.tokens import (
    Role,
    TokenNameTaken,
    UnknownToken,
    access_engine,
    create_token,
    list_tokens,
    migrate_access,
    revoke_token,
)
from clm_shared.operator_commands import run_on_database
from clm_shared.settings import Settings

tokens_app = typer.Typer(help="API tokens for the services' HTTP APIs.", no_args_is_help=True)
console = Console()
T = TypeVar("T")


async def _migrated(settings: Settings, engine: AsyncEngine) -> AsyncEngine:
    # Tokens can be made before any service ran: the access schema is created here if needed.
    await migrate_access(engine, settings)
    return access_engine(engine, settings)


def _with_engine(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    return run_on_database(work, schema=lambda settings: "public", prepare=_migrated, console=console)


@tokens_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the token, e.g. crm-sync.")],
    role: Annotated[Role, typer.Option("--role", help="read: GET requests only; admin: everything.")],
) -> None:
    """Create an API token; it is printed on the last line and cannot be shown again."""
    try:
        token = _with_engine(lambda engine: create_token(engine, name=name, role=role))
    except TokenNameTaken as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(
        f"API token [bold]{name}[/bold] ({role.value}) created; send it as `Authorization: Bearer <token>`:",
        highlight=False,
    )
    print(token)


@tokens_app.command("list")
def list_() -> None:
    """List API tokens (names, roles and dates; tokens themselves are stored only as hashes)."""
    tokens = _with_engine(list_tokens)
    table = Table("name", "role", "created", "revoked")
    for token in tokens:
        table.add_row(
            token.name,
            token.role.value,
            f"{token.created_at:%Y-%m-%d %H:%M}",
            f"{token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "",
        )
    console.print(table)


@tokens_app.command("revoke")
def revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke an API token; every service refuses it within 10 seconds."""
    try:
        _with_engine(lambda engine: revoke_token(engine, name=name))
    except UnknownToken as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"revoked {name}")
