"""SIGKILL the stage engine mid-stream: after a restart, state and change ids equal an undisturbed run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from clm_cli.infra.process import free_port
from clm_shared.cloudevents import decode
from clm_shared.kafka.admin import ensure_topics
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonSerializer
from clm_shared.topics import Topics
from stage_engine.memory import InMemoryEngine
from stage_engine.rules import load_rules
from stage_engine.stored_state import load_state
from tests.conftest import TEST_PARTITIONS, drop_schemas, make_settings
from tests.e2e.conftest import settings_env
from tests.secret_watch import read_log, watch_output
from tests.utils.engine_state import processed_count, snapshot
from tests.utils.factories import touchpoint
from tests.utils.kafka import read_records
from tests.waiting import wait_for

JOURNEY: list[tuple[str, dict[str, Any]]] = [
    ("Ad Impression", {}),
    ("Product Viewed", {}),
    ("Signed Up", {}),
    ("Order Completed", {"revenue": 60}),
    ("Email Opened", {}),
    ("Order Completed", {"revenue": 80}),
    ("Review Submitted", {"rating": 5}),
    ("Order Completed", {"revenue": 400}),
]


def journeys(customers: int) -> list[Touchpoint]:
    # Recent event times: no inactivity timer comes due while the test runs on the real clock.
    start = datetime.now(UTC) - timedelta(days=9)
    return [
        touchpoint(event, customer=f"c{n}", at=start + timedelta(days=step), **props)
        for step, (event, props) in enumerate(JOURNEY)
        for n in range(customers)
    ]


async def test_a_killed_engine_restarts_to_exactly_the_undisturbed_result(
    kafka_bootstrap: str, database_url: str
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}_"
    settings = make_settings(kafka_bootstrap, database_url, namespace)
    topics = Topics(namespace)
    await ensure_topics(kafka_bootstrap, {name: TEST_PARTITIONS for name in topics.all()})
    events = journeys(500)
    publisher = Publisher(kafka_bootstrap, client_id="test")
    serialize = JsonSerializer()
    await publisher.publish_many(
        [OutgoingRecord(topics.touchpoints, serialize(tp), key=tp.customer_key.encode()) for tp in events]
    )
    await publisher.stop()

    scratch = Path(tempfile.mkdtemp(prefix="clm-crash-"))
    env = settings_env(settings, scratch, {"stage-engine": free_port()})
    env["CLM_STAGE_ENGINE_BATCH_SIZE"] = "20"

    def start() -> subprocess.Popen[bytes]:
        log = (scratch / "engine.log").open("ab")
        return subprocess.Popen([sys.executable, "-m", "stage_engine"], env=env, stdout=log, stderr=log)

    async def applied_at_least(count: int) -> bool:
        return await processed_count(settings) >= count

    try:
        engine = start()
        await wait_for(lambda: applied_at_least(len(events) // 3), timeout_s=120, what="a third applied")
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=30)
        at_kill = await processed_count(settings)
        assert at_kill < len(events), "the engine finished before it was killed: the test proves nothing"

        engine = start()
        await wait_for(lambda: applied_at_least(len(events)), timeout_s=180, what="every touchpoint applied")

        async def drained() -> bool:
            return bool((await snapshot(settings))["outbox"] == 0)

        await wait_for(drained, timeout_s=60, what="the outbox drained")
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=30)

        reference = InMemoryEngine(load_rules())
        reference.process(events)
        state = await snapshot(settings)
        assert {cid: load_state(orjson.dumps(s)) for cid, s in state["customers"].items()} == reference.customers
        assert [(h[0], h[1], h[2]) for h in state["history"]] == sorted(
            (x.customer_id, x.sequence, x.event_id) for x in reference.published
        )
        published = await read_records(kafka_bootstrap, topics.stage_changes, len(reference.published))
        envelopes = [decode(r.value) for r in published]
        # Every change is on the topic (a re-publish after the kill may repeat some, with the same id) ...
        assert {e.id for e in envelopes} == {x.event_id for x in reference.published}
        # ... and each customer's events arrive in sequence order, without gaps.
        first_seen: dict[str, list[int]] = {}
        for e in envelopes:
            sequences = first_seen.setdefault(e.subject, [])
            if e.sequence not in sequences:
                sequences.append(e.sequence)
        assert all(seq == list(range(1, len(seq) + 1)) for seq in first_seen.values())
    finally:
        watch_output("stage engine log (crash test)", read_log(scratch / "engine.log"))
        shutil.rmtree(scratch, ignore_errors=True)
        await drop_schemas(database_url, namespace)
