"""`clm`: bring the platform up and down, prepare infrastructure, apply migrations."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from clm_cli.contracts import contracts_app
from clm_cli.infra.browser import install_chromium
from clm_cli.infra.postgres import install_server
from clm_cli.infra.process import InfraError
from clm_cli.mail import mail_app
from clm_cli.simulate import simulate
from clm_cli.stack import LocalStack, create_topics, migrate_all, prepare
from clm_cli.supervisor import Supervisor, stop_services
from clm_cli.tokens import tokens_app
from clm_shared.access.tokens import ADMIN_TOKEN_FILE, TOKEN_PREFIX
from clm_shared.secrets import read_or_create_secret
from clm_shared.settings import Settings, load_settings_or_exit
from ingest.cli import keys_app
from metrics.cli import metrics_app
from stage_engine.cli import stage_engine_app

app = typer.Typer(help="Customer lifecycle platform.", no_args_is_help=True, add_completion=False)
infra_app = typer.Typer(help="Local Kafka and PostgreSQL.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
app.add_typer(keys_app, name="keys")
app.add_typer(tokens_app, name="tokens")
app.add_typer(stage_engine_app, name="stage-engine")
app.add_typer(metrics_app, name="metrics")
app.add_typer(mail_app, name="mail")
app.add_typer(contracts_app, name="contracts")
app.command("simulate")(simulate)

console = Console(stderr=True)
T = TypeVar("T")


def _quiet_clients() -> None:
    # Waiting for a broker that is still starting makes aiokafka log every refused connection.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _step(what: str, action: Callable[[], T]) -> T:
    started = time.monotonic()
    with console.status(what + "..."):
        result = action()
    console.print(f"[green]✓[/green] {what} ({time.monotonic() - started:.1f}s)")
    return result


def _fail(error: InfraError) -> typer.Exit:
    console.print(f"[red]error:[/red] {error}", highlight=False)
    return typer.Exit(1)


def install_infra(settings: Settings) -> None:
    stack = LocalStack(settings)
    kafka = stack.kafka()
    if kafka:
        fetched = _step("Kafka broker jars", kafka.install)
        if not fetched:
            console.print("  (from the cache in " + str(kafka.libs_dir) + ")")
    if stack.postgres():
        _step("PostgreSQL server package", install_server)


def start_infra(settings: Settings) -> tuple[bool, bool]:
    """Start local Kafka and PostgreSQL when they are ours to run; returns which were started now."""
    stack = LocalStack(settings)
    kafka, postgres = stack.kafka(), stack.postgres()
    started_kafka = started_pg = False
    if postgres:
        started_pg = _step(f"PostgreSQL on 127.0.0.1:{postgres.port}", postgres.start)
        postgres.ensure_database()
    if kafka:
        started_kafka = _step(f"Kafka on {kafka.bootstrap}", kafka.start)
        _step("Kafka answers metadata requests", kafka.wait_ready)
    return started_kafka, started_pg


def stop_infra(settings: Settings) -> None:
    stack = LocalStack(settings)
    kafka, postgres = stack.kafka(), stack.postgres()
    if kafka and kafka.stop():
        console.print("stopped Kafka")
    if postgres and postgres.stop():
        console.print("stopped PostgreSQL")


def ensure_admin_token(settings: Settings) -> None:
    """Without ``CLM_ADMIN_TOKEN``, the services accept the token in ``<data_dir>/admin-token`` (made here once)."""
    if settings.admin_token is not None:
        console.print("admin token: CLM_ADMIN_TOKEN")
        return
    path = settings.data_dir / ADMIN_TOKEN_FILE
    read_or_create_secret(path, prefix=TOKEN_PREFIX)
    console.print(f"admin token: in {path} (owner-only); send it as `Authorization: Bearer <token>`", highlight=False)


@app.command()
def up() -> None:
    """Install and start Kafka, PostgreSQL and the four services in the foreground; Ctrl-C stops them."""
    settings = load_settings_or_exit()
    _quiet_clients()
    try:
        install_infra(settings)
        started_kafka, started_pg = start_infra(settings)
        running = LocalStack(settings).for_services()
        # The services are child processes: they read their settings from the environment.
        os.environ["CLM_KAFKA_BOOTSTRAP"] = running.kafka_bootstrap
        os.environ["CLM_KAFKA_REPLICATION_FACTOR"] = str(running.kafka_replication_factor)
        _step("migrations and topics", lambda: prepare(running))
        ensure_admin_token(running)
        code = asyncio.run(Supervisor(running, console).run())
    except InfraError as error:
        raise _fail(error) from None
    stack = LocalStack(settings)
    kafka, postgres = stack.kafka(), stack.postgres()
    # Stop only what this run started: a broker or database that was already up stays up.
    if kafka and started_kafka:
        kafka.stop()
    if postgres and started_pg:
        postgres.stop()
    console.print("stopped")
    raise typer.Exit(code)


@app.command()
def down() -> None:
    """Stop whatever `clm up` left running: services, Kafka, PostgreSQL."""
    settings = load_settings_or_exit()
    stopped = stop_services(settings)
    if stopped:
        console.print("stopped " + ", ".join(stopped))
    try:
        stop_infra(settings)
    except InfraError as error:
        raise _fail(error) from None


@app.command()
def migrate() -> None:
    """Apply every service's database migrations."""
    settings = load_settings_or_exit()
    asyncio.run(migrate_all(settings))
    console.print("migrations applied")


@infra_app.command("install")
def infra_install() -> None:
    """Fetch the Kafka jars and install PostgreSQL when missing (cached, idempotent)."""
    settings = load_settings_or_exit()
    try:
        install_infra(settings)
    except InfraError as error:
        raise _fail(error) from None


@infra_app.command("browser")
def infra_browser() -> None:
    """Install Debian's Chromium when missing: the dashboard's browser tests drive it (`make test`)."""
    try:
        _step("Chromium for the browser tests", install_chromium)
    except InfraError as error:
        raise _fail(error) from None


@infra_app.command("start")
def infra_start() -> None:
    """Start Kafka and PostgreSQL in the background, create the database and topics."""
    settings = load_settings_or_exit()
    _quiet_clients()
    try:
        install_infra(settings)
        start_infra(settings)
        asyncio.run(create_topics(settings))
    except InfraError as error:
        raise _fail(error) from None


@infra_app.command("stop")
def infra_stop() -> None:
    """Stop the local Kafka and PostgreSQL."""
    settings = load_settings_or_exit()
    try:
        stop_infra(settings)
    except InfraError as error:
        raise _fail(error) from None


if __name__ == "__main__":
    app()
