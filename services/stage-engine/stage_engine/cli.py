"""`clm stage-engine`: operator commands of the stage engine."""

from __future__ import annotations

import asyncio
import logging

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from clm_shared.settings import load_settings_or_exit
from stage_engine.app import system_clock
from stage_engine.rebuild import RebuildRefused, rebuild
from stage_engine.rules import RulesError

stage_engine_app = typer.Typer(help="The stage engine.", no_args_is_help=True)
console = Console()


@stage_engine_app.command("rebuild")
def rebuild_command() -> None:
    """Rebuild customers, stages, health and history from the touchpoints topic (stop the engine first)."""
    settings = load_settings_or_exit()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("replaying touchpoints", total=None)
        try:
            report = asyncio.run(
                rebuild(
                    settings,
                    clock=system_clock,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            )
        except (RulesError, RebuildRefused) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    console.print(
        f"rebuilt {report.customers} customers and {report.changes} lifecycle events "
        f"from {report.touchpoints} touchpoints ({report.undecodable} undecodable and"
        f" {report.erased_skipped} of erased customers skipped)"
    )
