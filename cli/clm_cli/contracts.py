"""`clm contracts`: write the documents other teams build against (run from the repository root)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from clm_shared import asyncapi

contracts_app = typer.Typer(help="Contracts for other teams' services.", no_args_is_help=True)
console = Console(stderr=True)


@contracts_app.command("asyncapi")
def write_asyncapi(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the document.")] = (
        asyncapi.DOCUMENT_PATH
    ),
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if the file is not current.")] = False,
) -> None:
    """The AsyncAPI 3 document of every topic, from the shared models."""
    if check:
        current = output.exists() and output.read_text(encoding="utf-8") == asyncapi.render()
        if not current:
            console.print(f"{output} is not current: run `clm contracts asyncapi`", highlight=False)
            raise typer.Exit(1)
        console.print(f"{output} is current", highlight=False)
        return
    changed = asyncapi.write(output)
    console.print(f"{'wrote' if changed else 'unchanged:'} {output}", highlight=False)
