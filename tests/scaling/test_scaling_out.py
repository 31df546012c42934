"""Scaling out: two instances of each consumer service on a 3-broker cluster; one broker SIGKILLed under load.

The README's "Scaling out" section rests on this. Topics have 6 partitions, 3 replicas and
``min.insync.replicas`` 2; the twins of each service share their consumer groups' partitions. A client
sends a shop's traffic through ingest (retrying what was not acknowledged, in order, with the same
messageIds); a third of the way in, the broker leading a touchpoints partition is SIGKILLed, and
restarted two thirds in. Afterwards every acknowledged event is on the topic and applied exactly once
(the engine's state equals the in-memory reference fed the same records), every stage change is on its
topic, no mail went out twice, and the metrics count what the engine decided.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path

import httpx
import orjson
import pytest

from campaigns.mail_sink import mail_dir, stored_mail
from clm_cli.infra.kafka import KafkaCluster
from clm_cli.stack import create_topics
from clm_shared.cloudevents import decode
from clm_shared.schemas.lifecycle import Stage
from clm_shared.schemas.touchpoint import TouchpointRecord
from clm_shared.serde import StructDeserializer
from clm_shared.settings import Settings
from stage_engine.memory import InMemoryEngine
from stage_engine.rules import load_rules
from stage_engine.stored_state import load_state
from tests.conftest import drop_schemas, make_settings
from tests.infra import _scratch_dir
from tests.scaling.platform import (
    PARTITIONS,
    REPLICAS,
    ScaledPlatform,
    fully_replicated,
    group_assignments,
    kafka_cluster,
    partition_leaders,
    topic_settings,
)
from tests.secret_watch import remember_secret
from tests.utils.engine_state import snapshot
from tests.utils.live_platform import Sender, read_all, shop_traffic
from tests.waiting import wait_for

CUSTOMERS = 100
read_touchpoint = StructDeserializer(TouchpointRecord, "Touchpoint")


@pytest.fixture(scope="module")
def cluster() -> Iterator[KafkaCluster]:
    with kafka_cluster() as cluster:
        yield cluster


@pytest.fixture
def platform(cluster: KafkaCluster, database_url: str) -> Iterator[ScaledPlatform]:
    namespace = f"t{uuid.uuid4().hex[:10]}_"
    settings = make_settings(cluster.bootstrap, database_url, namespace).model_copy(
        update={"kafka_partitions": PARTITIONS, "kafka_replication_factor": REPLICAS}
    )
    scratch = _scratch_dir("scaling")
    platform = ScaledPlatform(cluster, settings, scratch)
    try:
        yield platform
    finally:
        platform.stop_all()
        asyncio.run(drop_schemas(database_url, namespace))
        shutil.rmtree(scratch, ignore_errors=True)


async def test_a_broker_killed_under_load_loses_no_acknowledged_event_and_repeats_nothing(
    platform: ScaledPlatform,
) -> None:
    bootstrap, topics = platform.settings.kafka_bootstrap, platform.topics
    await create_topics(platform.settings)
    expected = {t: (PARTITIONS, REPLICAS, "2") for t in topics.all()}

    async def as_expected() -> bool:  # a broker answering may not have the new topics' metadata yet
        return await topic_settings(bootstrap, topics.all()) == expected

    await wait_for(as_expected, timeout_s=60, what="6 partitions, 3 replicas and min.insync.replicas 2 per topic")

    await platform.start_all()
    await wait_for(lambda: twins_share_every_group(platform), timeout_s=120, what="two members in each group")

    key = remember_secret(platform.cli("keys", "create", "--name", "shop"))
    traffic = shop_traffic(CUSTOMERS, datetime.now(UTC) - timedelta(minutes=30))
    sender = Sender(platform.url("ingest"), key, traffic, per_second=2.0, timeout_s=15.0)
    sending = asyncio.create_task(sender.run())
    third = len(sender.batches) // 3
    await wait_for(lambda: sender.acked >= third or sending.done(), timeout_s=120, what="a third sent")
    assert not sending.done(), "the traffic ended before the fault: the test proves nothing"
    victim = platform.cluster.node((await partition_leaders(bootstrap, topics.touchpoints))[0])
    await asyncio.to_thread(victim.kill)
    await wait_for(lambda: sender.acked >= 2 * third or sending.done(), timeout_s=180, what="two thirds sent")
    await asyncio.to_thread(victim.start)
    await asyncio.to_thread(victim.wait_ready)
    await sending
    await wait_for(lambda: fully_replicated(bootstrap, topics.all()), timeout_s=120, what="the victim back in sync")
    await platform.settled()
    print(f"\nbroker {victim.node_id} killed; answers not 200 meanwhile: {dict(sender.refused)}")

    assert sender.acked == len(sender.batches)
    acked = sender.message_ids()
    # Every acknowledged event is in Kafka (a batch sent again after a 503 may repeat some, same messageId).
    records = [read_touchpoint(value) for value in await read_all(bootstrap, topics.touchpoints)]
    assert {r.message_id for r in records} == acked
    # ... and applied exactly once: each messageId remembered once, the state the reference computes.
    reference = InMemoryEngine(load_rules())
    reference.process(records)
    state = await snapshot(platform.settings)
    assert state["processed"] == len(acked)
    assert {cid: load_state(orjson.dumps(s)) for cid, s in state["customers"].items()} == reference.customers
    assert [h[:3] for h in state["history"]] == sorted(
        (x.customer_id, x.sequence, x.event_id) for x in reference.published
    )
    # Every stage change on its topic; a repeated id (a relay retry) always carries the same change.
    envelopes = [decode(value) for value in await read_all(bootstrap, topics.stage_changes)]
    assert {e.id for e in envelopes} == {x.event_id for x in reference.published}
    contents = {(e.id, orjson.dumps(e.data, option=orjson.OPT_SORT_KEYS)) for e in envelopes}
    assert len(contents) == len(reference.published)

    await assert_no_mail_twice(platform)
    await assert_metrics_count_what_the_engine_decided(platform, reference)


async def twins_share_every_group(platform: ScaledPlatform) -> bool:
    """Each group has two members, each holding some partitions, none the same, together all of them."""
    for group, group_topics in platform.groups().items():
        members = await group_assignments(platform.settings.kafka_bootstrap, group)
        everything = {(t, p) for t in group_topics for p in range(PARTITIONS)}
        if len(members) != 2 or not all(members) or members[0] & members[1] or members[0] | members[1] != everything:
            return False
    return True


async def assert_no_mail_twice(platform: ScaledPlatform) -> None:
    """One mail per sent message row, each Message-ID once, one Message-ID per recipient and subject."""
    mails = stored_mail(mail_dir(Settings(data_dir=Path(platform.env["CLM_DATA_DIR"]))))
    ids = Counter(str(m.message["Message-ID"]) for m in mails)
    sent = await platform.rows("campaigns", "SELECT message_id FROM messages WHERE status = 'sent'")
    assert mails, "no campaign sent mail: the test proves nothing about sending twice"
    assert set(ids) == {f"<clm-{r[0]}@clm>" for r in sent}
    assert set(ids.values()) == {1}
    per_recipient = Counter((parseaddr(str(m.message["To"]))[1], str(m.message["Subject"])) for m in mails)
    assert set(per_recipient.values()) == {1}


async def assert_metrics_count_what_the_engine_decided(platform: ScaledPlatform, reference: InMemoryEngine) -> None:
    """The metrics twins applied each touchpoint once, and their funnel is the engine's stages."""
    assert await platform.scalar("metrics", "SELECT count(*) FROM processed_messages") == len(reference.processed)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {platform.admin_token}"}) as client:
        answer = await client.get(platform.url("metrics-1") + "/v1/funnel")
    assert answer.status_code == 200, answer.text
    stages = list(Stage)
    current = Counter(c.stage for c in reference.customers.values())
    expected = {
        s.value: (current[s], sum(n for stage, n in current.items() if stage and stages.index(stage) >= i))
        for i, s in enumerate(stages)
    }
    assert {s["stage"]: (s["current"], s["reached"]) for s in answer.json()["stages"]} == expected
