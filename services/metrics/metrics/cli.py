"""`clm metrics`: operator commands of the metrics service."""

from __future__ import annotations

import asyncio
import logging

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeRemainingColumn

from clm_shared.settings import load_settings_or_exit
from metrics.rebuild import RebuildRefused, rebuild

metrics_app = typer.Typer(help="The metrics service.", no_args_is_help=True)
console = Console()


@metrics_app.command("rebuild")
def rebuild_command() -> None:
    """Rebuild every metric's facts from the topics (stop the metrics service first)."""
    settings = load_settings_or_exit()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console,
    ) as bar:  # fmt: skip
        tasks: dict[str, TaskID] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(f"replaying {what}", total=total)
            bar.update(tasks[what], completed=done, total=total)

        try:
            report = asyncio.run(rebuild(settings, progress=progress))
        except RebuildRefused as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    console.print(
        f"rebuilt the metrics from {report.touchpoints} touchpoints and {report.lifecycle_events} lifecycle"
        f" and campaign events ({report.undecodable} undecodable skipped)"
    )
