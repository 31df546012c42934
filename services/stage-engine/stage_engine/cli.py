"""`clm stage-engine`: operator commands of the stage engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Column, Table
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import partitions_of
from clm_shared.schemas.touchpoint import TouchpointRecord
from clm_shared.serde import DecodeError, StructDeserializer
from clm_shared.settings import Settings, load_settings_or_exit
from clm_shared.topics import Topics
from stage_engine.app import system_clock
from stage_engine.erasure import KEY_FILE, erasure_key
from stage_engine.preview import Preview, PreviewReport
from stage_engine.rebuild import RebuildRefused, rebuild, was_erased
from stage_engine.rules import RulesError, load_rules

stage_engine_app = typer.Typer(help="The stage engine.", no_args_is_help=True)
console = Console()


def _progress_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@stage_engine_app.command("rebuild")
def rebuild_command() -> None:
    """Rebuild customers, stages, health and history from the touchpoints topic (stop the engine first)."""
    settings = load_settings_or_exit()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    with _progress_bar() as bar:
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


@stage_engine_app.command("preview")
def preview_command(
    rules: Annotated[Path, typer.Option("--rules", help="The new rules file to compare with the current rules.")],
    days: Annotated[
        float | None, typer.Option("--days", min=0.0, help="Only the touchpoints published in the last N days.")
    ] = None,
) -> None:
    """What a new rules file would change: customers per stage and health, and who moves where. Writes nothing."""
    settings = load_settings_or_exit()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a broker error is reported once, below
    try:
        # Both files are checked before anything is read, with the engine's own start-up message.
        # Two processes, one per rule set; forked here, before the progress bar's thread starts.
        run = Preview(load_rules(settings.rules_file), load_rules(rules), freeze_gc=True, processes=2)
    except RulesError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    since = system_clock() - timedelta(days=days) if days is not None else None
    try:
        _replay(run, settings, since)
    finally:
        run.close()  # the worker is gone after the report; this ends it on an error


def _replay(run: Preview, settings: Settings, since: datetime | None) -> None:
    """Replay the topic into ``run`` and print its report; a problem stops the command with its message."""
    try:
        with _progress_bar() as bar:
            task = bar.add_task("replaying touchpoints", total=None)
            skipped = asyncio.run(
                replay_into(
                    run,
                    settings,
                    since=since,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            )
    except KafkaError as exc:
        console.print(f"[red]error:[/red] cannot read the touchpoints topic from {settings.kafka_bootstrap}: {exc}")
        raise typer.Exit(1) from None
    except (PreviewRefused, OSError, SQLAlchemyError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    show(run.report(system_clock()), skipped=skipped, since=since)


@dataclass
class Skipped:
    undecodable: int = 0
    erased: int = 0


async def replay_into(
    run: Preview, settings: Settings, *, since: datetime | None, progress: Callable[[int, int], None]
) -> Skipped:
    """Feed the touchpoints topic (from ``since``) to the preview, skipping what a rebuild would skip."""
    erased, key = await erased_ids(settings)
    deserialize = StructDeserializer(TouchpointRecord, "Touchpoint")  # what the live engine decodes
    skipped = Skipped()
    seen = 0
    backlog = TopicBacklog(settings.kafka_bootstrap, Topics(settings.topic_namespace).touchpoints, since=since)
    async for records in backlog.batches(settings.stage_engine_batch_size):
        batch: list[TouchpointRecord] = []
        values: list[bytes] = []
        for record in records:
            try:
                tp = deserialize(record.value)
            except DecodeError:
                skipped.undecodable += 1  # the live engine dead-lettered it
                continue
            if erased and was_erased(tp, erased, key):
                skipped.erased += 1
                continue
            batch.append(tp)
            values.append(record.value)  # the worker for the new rules decodes its own copy
        run.apply(batch, values)
        seen += len(records)
        progress(seen, backlog.total)
    return skipped


async def erased_ids(settings: Settings) -> tuple[dict[str, datetime], bytes]:
    """The engine's erased ids (keyed hashes) and their key, read only: erased customers stay out of the preview.

    No table (the engine never ran here) means nothing was erased. Rows left unkeyed by older
    versions are re-keyed when the engine starts; until then they are not recognised here.
    """
    db = create_engine(settings.database_url, schema=service_schema(settings, "stage-engine"), pool_size=1)
    try:
        async with db.connect() as conn:
            if await conn.scalar(text("SELECT to_regclass('erased_ids')")) is None:
                return {}, b""
            rows = (await conn.execute(text("SELECT id_hash, erased_at FROM erased_ids WHERE keyed"))).all()
    finally:
        await db.dispose()
    if not rows:
        return {}, b""
    key_file = settings.data_dir / KEY_FILE
    if settings.erasure_key is None and not key_file.exists():
        # Generating a key here would write a file, and could not recognise the ids anyway.
        raise PreviewRefused(
            f"{len(rows)} customers were erased, but their keyed ids cannot be recognised without the erasure key:"
            f" set CLM_ERASURE_KEY or run where {key_file} is"
        )
    return {row[0]: row[1] for row in rows}, erasure_key(settings)


class PreviewRefused(RuntimeError):
    pass


class TopicBacklog:
    """Every record of a topic up to its end offsets at the start (from ``since``, by record timestamp).

    Group-less and manually assigned: reading it neither joins nor creates a consumer group, so the
    engine's group and its committed offsets are untouched.
    """

    def __init__(self, bootstrap: str, topic: str, *, since: datetime | None = None) -> None:
        self.bootstrap, self.topic, self.since = bootstrap, topic, since
        self.total = 0

    async def batches(self, size: int) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # records removed by retention meanwhile: go on from what is left
            client_id="clm-stage-preview",
        )
        try:
            await consumer.start()
            partitions = [TopicPartition(self.topic, p) for p in await partitions_of(self.bootstrap, self.topic)]
            if not partitions:
                raise PreviewRefused(f"topic {self.topic} does not exist on {self.bootstrap} (CLM_TOPIC_NAMESPACE?)")
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            starts = await self._starts(consumer, partitions, ends)
            for tp in partitions:
                consumer.seek(tp, starts[tp])
            self.total = sum(ends[tp] - starts[tp] for tp in partitions)
            remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
            while remaining:
                fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=size)
                out: list[ConsumerRecord[bytes, bytes]] = []
                for tp, records in fetched.items():
                    out.extend(r for r in records if r.offset < ends[tp])
                # By position, not by the last record: the last offsets may be transaction markers.
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
                yield out
        finally:
            await consumer.stop()

    async def _starts(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        beginnings: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
        if self.since is None:
            return beginnings
        found = await consumer.offsets_for_times({tp: int(self.since.timestamp() * 1000) for tp in partitions})
        # No record at or after ``since`` in a partition: nothing to read there.
        return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in partitions}


def show(report: PreviewReport, *, skipped: Skipped, since: datetime | None = None) -> None:
    """The two tables and the examples, as the operator reads them before changing the rules file."""
    window = f" since {since:%Y-%m-%d %H:%M} UTC" if since else ""
    console.print(
        f"{report.touchpoints} touchpoints{window} ({skipped.undecodable} undecodable and {skipped.erased} of erased"
        f" customers skipped), {report.customers} customers; inactivity judged at {report.now:%Y-%m-%d %H:%M} UTC"
    )
    counts = Table("stage / health", *_numbers("current", "new", "difference"), title="Customers per stage and health")
    for name, c in report.stages.items():
        counts.add_row(name, str(c.current), str(c.new), f"{c.difference:+d}" if c.difference else "0")
    counts.add_section()
    for name, c in report.health.items():
        counts.add_row(name, str(c.current), str(c.new), f"{c.difference:+d}" if c.difference else "0")
    console.print(counts)
    order = [*report.stages]
    matrix = Table(
        "current \\ new", *_numbers(*order), title="Stage movement (rows: current rules, columns: new rules)"
    )
    for before in order:
        matrix.add_row(before, *(str(report.matrix.get((before, after), 0)) for after in order))
    console.print(matrix)
    if not report.examples:
        console.print("no customer would change stage")
        return
    console.print(f"{report.moved} customers would change stage; examples (up to 3 per movement):")
    for (before, after), ids in sorted(report.examples.items(), key=_by_stage_order(order)):
        shown = ", ".join(_masked(i) for i in ids)
        console.print(f"  {before} -> {after} ({report.matrix[(before, after)]}): {shown}", highlight=False)


def _masked(customer_id: str) -> str:
    """An id that is an email address is shown as ``j…@example.com``: terminals end up in logs and tickets."""
    local, at, domain = customer_id.partition("@")
    return f"{local[:1]}…@{domain}" if at and "." in domain else customer_id


def _numbers(*headers: str) -> list[Column]:
    return [Column(h, justify="right") for h in headers]


def _by_stage_order(order: list[str]) -> Callable[[tuple[tuple[str, str], tuple[str, ...]]], tuple[int, int]]:
    return lambda item: (order.index(item[0][0]), order.index(item[0][1]))
