"""`clm simulate`: a seeded shop's traffic sent through the ingest API, to watch the platform work."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from clm_cli.simulation.journeys import simulate as simulate_traffic
from clm_cli.simulation.sending import BatchSender, Pacing, SendAborted, SendReport
from clm_cli.simulation.summary import TrafficSummary, summarize
from clm_cli.simulation.tunables import Tunables, load_tunables
from clm_shared.schemas.segment import MAX_BATCH_EVENTS
from clm_shared.settings import Settings, load_settings_or_exit

console = Console()
progress_console = Console(stderr=True)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} events/s" if speed else "- events/s", style="progress.data.speed")


def default_ingest_url(settings: Settings) -> str:
    """Where `clm up` serves ingest: the configured port, on loopback when it listens on every interface."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.ingest_port}"


def simulate(
    customers: Annotated[int, typer.Option(min=1, max=1_000_000, help="Visitors whose journeys are simulated.")] = 100,
    days: Annotated[float, typer.Option(min=0.01, max=3650, help="The journeys start within this many days.")] = 30,
    seed: Annotated[int, typer.Option(help="The same seed gives the same traffic, message ids included.")] = 1,
    rate: Annotated[float, typer.Option(min=0, help="Events per second to send; 0: as fast as ingest takes.")] = 200,
    url: Annotated[
        str | None,
        typer.Option(envvar="CLM_INGEST_URL", help="Ingest's base URL; default from CLM_HOST and CLM_INGEST_PORT."),
    ] = None,
    write_key: Annotated[
        str | None,
        typer.Option(
            envvar="CLM_WRITE_KEY", show_default=False, help="A write key (`clm keys create --name simulator`)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=500, help="Most events in one /v1/batch request.")] = 100,
    assignments: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="NAME=VALUE", help="Override one tunable, e.g. --set abandon_cart=0.4."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A YAML or JSON file of tunables (--set wins over it)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Generate and count the traffic; send nothing.")] = False,
    list_tunables: Annotated[bool, typer.Option("--tunables", help="List the tunables and their defaults.")] = False,
) -> None:
    """Send a realistic shop's traffic (ads, sign-ups, orders, surveys, referrals, churn) to ingest."""
    if list_tunables:
        _print_tunables()
        return
    try:
        tunables = load_tunables(config, assignments or [])
    except (ValueError, OSError) as exc:
        detail = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
        console.print(f"[red]error:[/red] invalid tunables:\n{detail}", highlight=False)
        raise typer.Exit(2) from None
    traffic = simulate_traffic(random.Random(seed), tunables, customers=customers, days=days, now=datetime.now(UTC))
    summary = summarize(traffic)
    if dry_run:
        _print_summary(summary, None)
        return
    if not write_key:
        console.print(
            "[red]error:[/red] a write key is needed: `clm keys create --name simulator` prints one;"
            " pass it with --write-key or CLM_WRITE_KEY",
            highlight=False,
        )
        raise typer.Exit(2)
    base_url = (url or default_ingest_url(load_settings_or_exit())).rstrip("/")
    _check_reachable(base_url)
    report, aborted = _send(traffic.calls, base_url, write_key, Pacing(rate, min(batch_size, MAX_BATCH_EVENTS)))
    _print_summary(summary, report)
    if aborted:
        console.print(f"[red]error:[/red] stopped: {aborted}", highlight=False)
    if aborted or report.requests_failed:
        raise typer.Exit(1)


def _check_reachable(base_url: str) -> None:
    """One quick look before sending, so a platform that is not up is one line, not minutes of retries."""
    try:
        httpx.get(base_url + "/healthz", timeout=5.0)
    except httpx.HTTPError as exc:
        console.print(
            f"[red]error:[/red] ingest does not answer at {base_url} ({type(exc).__name__}):"
            " is the platform up (`make up`)? Else point --url or CLM_INGEST_URL at it",
            highlight=False,
        )
        raise typer.Exit(1) from None


def _send(calls: list[dict[str, object]], base_url: str, write_key: str, pacing: Pacing) -> tuple[SendReport, str]:
    progress = Progress(
        TextColumn("[bold]sending[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=progress_console,
    )
    report = SendReport()
    with progress, httpx.Client(base_url=base_url, timeout=httpx.Timeout(30.0, connect=5.0)) as client:
        task = progress.add_task("sending", total=len(calls))
        try:
            BatchSender(client, write_key).send(calls, pacing, report, lambda n: progress.advance(task, n))
        except SendAborted as exc:
            return report, str(exc)
    return report, ""


def _print_summary(summary: TrafficSummary, report: SendReport | None) -> None:
    rows = [
        ("customers", f"{summary.customers:,}"),
        ("events", f"{summary.events:,}"),
        ("sign-ups", f"{summary.count('Signed Up'):,}"),
        ("trials started / converted", f"{summary.count('Trial Started'):,} / {summary.count('Trial Converted'):,}"),
        ("checkouts started", f"{summary.count('Checkout Started'):,}"),
        ("orders", f"{summary.count('Order Completed'):,}"),
        ("revenue", f"{summary.revenue:,.2f}"),
        ("abandoned checkouts", f"{summary.abandoned_checkouts:,}"),
        ("NPS / CSAT answers", f"{summary.count('NPS Survey Answered'):,} / {summary.count('CSAT Survey Answered'):,}"),
        ("reviews", f"{summary.count('Review Submitted'):,}"),
        ("referrals sent / converted", f"{summary.count('Referral Sent'):,} / {summary.count('Referral Converted'):,}"),
        ("went quiet / came back", f"{summary.went_quiet:,} / {summary.came_back:,}"),
    ]
    if report is not None:
        rows += [
            ("events sent", f"{report.events_sent:,}"),
            ("requests (retries)", f"{report.requests:,} ({report.retries:,})"),
            ("requests failed", f"{report.requests_failed:,}"),
        ]
    title = "simulated shop" + (" (dry run: nothing sent)" if report is None else "")
    figures = Table("figure", "count", title=title)
    for name, value in rows:
        figures.add_row(name, value)
    events = Table("call", "event", "count", title="events by type and name")
    for kind, count in sorted(summary.by_type.items()):
        if kind != "track":
            events.add_row(kind, "", f"{count:,}")
    for name, count in summary.by_name.most_common():
        events.add_row("track", name, f"{count:,}")
    console.print(figures)
    console.print(events)
    if report is not None:
        for error in report.errors:
            console.print(f"[yellow]failed:[/yellow] {error}", highlight=False)


def _describe(error: ValidationError) -> str:
    """One line per bad tunable; the rejected value is left out, as for settings."""
    return "\n".join(f"  {'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in error.errors())


def _print_tunables() -> None:
    table = Table("tunable", "default", "meaning", title="--set NAME=VALUE or --config FILE")
    for name, spec in Tunables.model_fields.items():
        table.add_row(name, str(spec.default), spec.description or "")
    console.print(table)
