"""`clm simulate` against a real ingest (uvicorn, real Kafka and PostgreSQL): every event sent lands on the topic."""

from __future__ import annotations

import asyncio
import re

from typer.testing import CliRunner

from clm_cli.main import app
from clm_shared.db import create_engine, service_schema
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from ingest.app import create_app
from ingest.keys import create_key
from tests.utils.kafka import read_touchpoints, topic_size
from tests.utils.serving import served


async def test_simulated_traffic_arrives_on_the_touchpoints_topic(
    settings: Settings, topics: Topics, kafka_bootstrap: str
) -> None:
    with served(create_app(settings), "ingest") as url:
        engine = create_engine(settings.database_url, schema=service_schema(settings, "ingest"), pool_size=1)
        try:
            key = await create_key(engine, name="simulator")
        finally:
            await engine.dispose()
        args = ["simulate", "--customers", "25", "--days", "90", "--seed", "3", "--rate", "2000", "--batch-size", "40"]
        # The command runs its own client and sleeps; a thread keeps this test's event loop free.
        result = await asyncio.to_thread(
            CliRunner().invoke, app, [*args, "--url", url], env={"CLM_WRITE_KEY": key, "COLUMNS": "200"}
        )
    assert result.exit_code == 0, result.output
    assert key not in result.output
    sent = int(re.search(r"events sent\s*│\s*([\d,]+)", result.output).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert re.search(r"requests failed\s*│\s*0\b", result.output)
    assert sent > 100
    touchpoints = await read_touchpoints(kafka_bootstrap, topics.touchpoints, sent)
    assert await topic_size(kafka_bootstrap, topics.touchpoints) == sent
    assert len({tp.message_id for tp in touchpoints}) == sent
    assert {tp.source for tp in touchpoints} == {"simulator"}
    assert {tp.type for tp in touchpoints} == {"track", "page", "identify"}
    assert any(tp.event == "Order Completed" for tp in touchpoints)
