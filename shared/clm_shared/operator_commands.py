"""What the operators' database commands (`clm keys`, `clm tokens`) share: a short-lived engine, one clear error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.db import create_engine
from clm_shared.settings import Settings, load_settings_or_exit

T = TypeVar("T")
Prepare = Callable[[Settings, AsyncEngine], Awaitable[AsyncEngine]]


def run_on_database(
    work: Callable[[AsyncEngine], Awaitable[T]],
    *,
    schema: Callable[[Settings], str],
    prepare: Prepare,
    console: Console,
) -> T:
    """Run ``work`` on the engine ``prepare`` hands over (after it migrated what the command needs).

    Commands can run before any service did, so ``prepare`` creates the tables; PostgreSQL being
    away ends the command with one line, not a traceback.
    """
    settings = load_settings_or_exit()

    async def run() -> T:
        engine = create_engine(settings.database_url, schema=schema(settings), pool_size=1)
        try:
            return await work(await prepare(settings, engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except OSError as exc:
        console.print(f"[red]error:[/red] PostgreSQL is unreachable ({exc}); is it running? (`make up`)")
        raise typer.Exit(1) from None
