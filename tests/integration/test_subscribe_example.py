"""The README's subscriber example, run as a program against the real broker, prints what the engine published."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from clm_shared.kafka.producer import Publisher
from clm_shared.schemas.lifecycle import Health, Stage
from clm_shared.topics import Topics
from stage_engine.batch import Emitted
from stage_engine.events import to_record
from stage_engine.lifecycle import HealthMove, StageMove

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "subscribe_stage_changes.py"
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def stage_move(from_stage: Stage | None, to_stage: Stage, *skipped: Stage) -> StageMove:
    return StageMove(from_stage, to_stage, skipped, rule="test", message_id="m1", event_time=AT)


async def test_the_example_prints_each_stage_change_the_stage_engine_published(
    kafka_bootstrap: str, topics: Topics, namespace: str
) -> None:
    emitted = [
        Emitted("u1", 1, "e1", stage_move(None, Stage.DISCOVERY)),
        Emitted("u1", 2, "e2", HealthMove(Health.ACTIVE, Health.AT_RISK, "inactive", None, AT)),
        Emitted("u1", 3, "e3", stage_move(Stage.DISCOVERY, Stage.CONVERSION, Stage.ENGAGEMENT)),
        Emitted("u2", 1, "e4", stage_move(None, Stage.DISCOVERY)),
    ]
    publisher = Publisher(kafka_bootstrap, client_id="test-example")
    await publisher.start()
    try:
        # The records the stage engine's outbox relay publishes: its own encoding, keyed by customer.
        await publisher.publish_many([to_record(item, topics.stage_changes) for item in emitted])
    finally:
        await publisher.stop()

    env = {
        **os.environ,
        "CLM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CLM_TOPIC_NAMESPACE": namespace,
        "MAX_EVENTS": str(len(emitted)),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    # One customer's events keep their order; two customers' may interleave (different partitions).
    assert [line for line in lines if line.startswith("u1:")] == [
        "u1: (new) -> discovery",
        "u1: discovery -> conversion",
    ]
    assert [line for line in lines if line.startswith("u2:")] == ["u2: (new) -> discovery"]
    assert len(lines) == 3
