"""`clm stage-engine preview` against a real Kafka: it prints the movement matrix and writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from typer.testing import CliRunner, Result

from clm_cli.main import app
from clm_shared.db import create_engine, service_schema
from clm_shared.migrations import apply_migrations
from clm_shared.serde import JsonSerializer
from clm_shared.settings import Settings, get_settings
from clm_shared.topics import Topics
from stage_engine.app import MIGRATIONS
from stage_engine.erasure import erased_id_hash
from stage_engine.rules import DEFAULT_RULES_FILE
from tests.integration.stage_engine.test_recovery import publish
from tests.secret_watch import remember_secret
from tests.unit.stage_engine.test_preview import dataset
from tests.utils.factories import T0, touchpoint
from tests.utils.kafka import topic_size

serialize = JsonSerializer()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[Settings]:
    """`clm` reads its settings from the environment, as an operator's shell would give them."""
    monkeypatch.setenv("CLM_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("CLM_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CLM_TOPIC_NAMESPACE", settings.topic_namespace)
    monkeypatch.setenv("CLM_SCHEMA_NAMESPACE", settings.schema_namespace)
    monkeypatch.delenv("CLM_RULES_FILE", raising=False)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@pytest.fixture
def new_rules(tmp_path: Path) -> Path:
    """The shipped rules, except that conversion wants two paid orders."""
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
    raw["stages"][2]["when"][0]["count"] = 2
    path = tmp_path / "new_rules.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


async def clm_preview(*args: str) -> Result:
    # The command runs its own event loop, so it runs in a thread beside the test's.
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["stage-engine", "preview", *args], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result


def matrix_rows(output: str) -> dict[str, list[int]]:
    """The movement matrix as printed: row label -> counts in the columns' order."""
    table = output.split("Stage movement")[1]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) > 1 and all(c.isdigit() for c in cells[1:]):
            rows[cells[0]] = [int(c) for c in cells[1:]]
    return rows


async def test_preview_prints_the_movement_matrix_and_writes_nothing(
    cli_env: Settings, topics: Topics, new_rules: Path
) -> None:
    await publish(cli_env, topics, dataset())

    output = (await clm_preview("--rules", str(new_rules))).output

    assert "15 touchpoints" in output and "11 customers" in output
    #                        discovery engagement conversion retention loyalty advocacy none
    assert matrix_rows(output) == {
        "discovery": [1, 0, 0, 0, 0, 0, 0],
        "engagement": [0, 1, 0, 0, 0, 0, 0],
        "conversion": [4, 2, 1, 0, 0, 0, 0],
        "retention": [0, 0, 0, 1, 0, 0, 0],
        "loyalty": [0, 0, 0, 0, 0, 0, 0],
        "advocacy": [0, 0, 0, 0, 0, 0, 0],
        "none": [0, 0, 0, 0, 0, 0, 1],
    }
    assert "conversion -> discovery (4): d1-order, d2-order, d3-order" in output
    assert "conversion -> engagement (2): c-signup-order, h-merged" in output
    await assert_wrote_nothing(cli_env, topics)


async def test_days_reads_only_the_records_published_in_that_window(
    cli_env: Settings, topics: Topics, new_rules: Path
) -> None:
    now = datetime.now(UTC)
    old = touchpoint("Order Completed", customer="old-buyer", at=now - timedelta(days=10), revenue=20)
    recent = touchpoint("Order Completed", customer="new-buyer", at=now - timedelta(hours=1), revenue=20)
    producer = AIOKafkaProducer(bootstrap_servers=cli_env.kafka_bootstrap)
    await producer.start()
    try:
        for tp, published_at in ((old, now - timedelta(days=10)), (recent, now)):
            await producer.send_and_wait(
                topics.touchpoints,
                serialize(tp),
                key=tp.customer_key.encode(),
                timestamp_ms=int(published_at.timestamp() * 1000),
            )
    finally:
        await producer.stop()

    everything = (await clm_preview("--rules", str(new_rules))).output
    last_days = (await clm_preview("--rules", str(new_rules), "--days", "5")).output

    assert "2 touchpoints" in everything and "conversion -> discovery (2): new-buyer, old-buyer" in everything
    assert "1 touchpoints since" in last_days and "conversion -> discovery (1): new-buyer" in last_days


async def test_erased_customers_stay_out_and_email_ids_are_masked(
    cli_env: Settings, topics: Topics, new_rules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = remember_secret("preview-erasure-key")
    monkeypatch.setenv("CLM_ERASURE_KEY", key)
    buyer = "ann@example.com"
    await publish(cli_env, topics, [*dataset(), touchpoint("Order Completed", customer=buyer, at=T0, revenue=5)])
    # The engine's own tables, as after it erased d1-order (its touchpoints were received before).
    schema = service_schema(cli_env, "stage-engine")
    db = create_engine(cli_env.database_url, schema=schema, pool_size=1)
    try:
        await apply_migrations(db, script_location=MIGRATIONS, schema=schema)
        async with db.begin() as conn:
            await conn.execute(
                text("INSERT INTO erased_ids (id_hash, erased_at) VALUES (:h, :at)"),
                {"h": erased_id_hash("d1-order", key.encode()), "at": datetime.now(UTC)},
            )
    finally:
        await db.dispose()

    output = (await clm_preview("--rules", str(new_rules))).output

    assert "1 of erased customers skipped" in output and "11 customers" in output
    assert "conversion -> discovery (4): a…@example.com, d2-order, d3-order" in output
    assert buyer not in output


async def test_a_missing_topic_is_an_error_not_an_empty_preview(cli_env: Settings, new_rules: Path) -> None:
    # No `topics` fixture: this namespace has no topics.
    result = await asyncio.to_thread(CliRunner().invoke, app, ["stage-engine", "preview", "--rules", str(new_rules)])

    assert result.exit_code == 1, result.output
    assert f"topic {cli_env.topic_namespace}clm.touchpoints.v1 does not exist" in result.output


async def assert_wrote_nothing(settings: Settings, topics: Topics) -> None:
    assert await topic_size(settings.kafka_bootstrap, topics.stage_changes) == 0
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        groups = [group[0] for group in await admin.list_consumer_groups()]
    finally:
        await admin.close()
    assert not [g for g in groups if g.startswith(settings.topic_namespace)]
    db = create_engine(settings.database_url, schema="public", pool_size=1)
    try:
        async with db.begin() as conn:
            schemas = await conn.scalars(
                text("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE :ns"),
                {"ns": settings.schema_namespace + "%"},
            )
            assert list(schemas) == []  # not even the engine's tables were created
    finally:
        await db.dispose()
