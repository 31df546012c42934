"""`CLM_KAFKA_BROKERS=3 clm up` end to end: the launcher's own 3-node KRaft cluster, the four services, `clm down`.

The cluster starts on free ports (``CLM_KAFKA_BOOTSTRAP`` of one loopback address is where a local
cluster starts), with small heaps; PostgreSQL is the session's. Events posted through ingest reach
the stage engine, whose stage change is on its topic; the topics have 3 replicas and
``min.insync.replicas`` 2; `clm down` stops the services and the three nodes. Metrics runs two
worker processes (``CLM_METRICS_WORKERS``): its Prometheus page adds up both workers' records and
shows one value of each gauge.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
import orjson
import pytest

from clm_cli.infra.process import free_port, free_ports, port_in_use
from clm_cli.stack import SERVICES
from clm_shared.cloudevents import decode
from clm_shared.schemas.lifecycle import STAGE_ORDER, EventType
from clm_shared.topics import Topics
from tests.conftest import drop_schemas
from tests.infra import ROOT
from tests.scaling.platform import group_assignments, topic_settings
from tests.secret_watch import read_log, remember_secret, watch_output
from tests.utils.kafka import read_records
from tests.waiting import wait_for

BROKERS = 3
HEAP_MB = 128  # each node's (the least the setting allows): three of them and four services fit in about 1.5 GB


def cluster_env(database_url: str, namespace: str, data_dir: Path, kafka_port: int) -> dict[str, str]:
    """What an operator sets to run a second platform next to a first: every port and folder its own."""
    env = {
        **os.environ,
        "CLM_KAFKA_BROKERS": str(BROKERS),
        "CLM_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
        "CLM_KAFKA_HEAP_MB": str(HEAP_MB),
        "CLM_KAFKA_PARTITIONS": "3",
        "CLM_DATABASE_URL": database_url,
        "CLM_TOPIC_NAMESPACE": namespace,
        "CLM_SCHEMA_NAMESPACE": namespace,
        "CLM_DATA_DIR": str(data_dir),
        "CLM_CACHE_DIR": str(ROOT / ".cache"),
        "CLM_SMTP_PORT": str(free_port()),
        "CLM_METRICS_WORKERS": "2",
    }
    env.pop("CLM_KAFKA_REPLICATION_FACTOR", None)  # the launcher's choice for its cluster: 3
    env.update({f"CLM_{name.replace('-', '_').upper()}_PORT": str(free_port()) for name in SERVICES})
    return env


def port_of(env: dict[str, str], name: str) -> int:
    return int(env[f"CLM_{name.replace('-', '_').upper()}_PORT"])


def clm(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`clm <args>` as the operator runs it, in the platform's environment."""
    done = subprocess.run(
        [sys.executable, "-m", "clm_cli.main", *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0 or not check, done.stdout + done.stderr
    return done


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def ready(client: httpx.AsyncClient, port: int) -> bool:
    try:
        return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def ready_or_exited(client: httpx.AsyncClient, port: int, up: asyncio.subprocess.Process) -> bool:
    """The service answers ready, or `clm up` gave up (its log says why): no waiting out the timeout."""
    return up.returncode is not None or await ready(client, port)


async def test_clm_up_with_three_brokers_serves_events_and_clm_down_stops_it(
    database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}_"
    kafka_port = free_ports(2 * BROKERS)
    env = cluster_env(database_url, namespace, tmp_path / "data", kafka_port)
    bootstrap = ",".join(f"127.0.0.1:{kafka_port + 2 * n}" for n in range(BROKERS))
    log_path = tmp_path / "up.log"
    log = log_path.open("wb")
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clm_cli.main", "up", env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL
    )
    stopped = False
    try:
        for name in SERVICES:
            await wait_for(partial(ready_or_exited, client, port_of(env, name), up), timeout_s=240, what=name)
            assert up.returncode is None, read_log(log_path)[-3000:]
        topics = Topics(namespace)
        settings = await topic_settings(bootstrap, [topics.touchpoints, topics.stage_changes])
        assert settings == {topics.touchpoints: (3, 3, "2"), topics.stage_changes: (3, 3, "2")}

        key = remember_secret(clm(env, "keys", "create", "--name", "shop").stdout.strip().splitlines()[-1])
        now = datetime.now(UTC).isoformat()
        events = [
            {"type": "page", "userId": "ada", "name": "Home", "messageId": "m-1", "timestamp": now},
            {"type": "track", "userId": "ada", "event": "Signed Up", "messageId": "m-2", "timestamp": now},
        ]
        answer = await client.post(
            f"http://127.0.0.1:{port_of(env, 'ingest')}/v1/batch",
            content=orjson.dumps({"batch": events}),
            auth=(key, ""),
        )
        assert (answer.status_code, answer.json()) == (200, {"success": True})
        records = await read_records(bootstrap, topics.stage_changes, 2, timeout_s=120)
        changes = [decode(r.value) for r in records]
        assert [(c.type, c.subject, c.data["to_stage"]) for c in changes] == [
            (EventType.STAGE_CHANGED, "ada", "discovery"),
            (EventType.STAGE_CHANGED, "ada", "engagement"),
        ]
        # More customers, spread over the partitions: both metrics workers hold some of each group's.
        others = [f"u{n}" for n in range(8)]
        answer = await client.post(
            f"http://127.0.0.1:{port_of(env, 'ingest')}/v1/batch",
            content=orjson.dumps(
                {
                    "batch": [
                        {**event, "userId": user, "messageId": f"{user}-{event['messageId']}"}
                        for user in others
                        for event in events
                    ]
                }
            ),
            auth=(key, ""),
        )
        assert answer.status_code == 200
        touchpoints = 2 * (1 + len(others))
        expected = [
            f'clm_consumer_records_total{{group="{namespace}metrics",topic="{topics.touchpoints}"}} {touchpoints}.0',
            f'clm_consumer_records_total{{group="{namespace}metrics-lifecycle",topic="{topics.stage_changes}"}}'
            f" {touchpoints}.0",  # two stage changes per customer
            *(
                f'clm_metrics_customers_by_stage{{stage="{stage}"}} {1 + len(others) if stage == "engagement" else 0}.0'
                for stage in STAGE_ORDER
            ),
        ]
        exported: list[str] = []
        members: dict[str, list[int]] = {}

        async def metrics_counted() -> bool:
            for group in ("metrics", "metrics-lifecycle"):
                members[group] = [len(held) for held in await group_assignments(bootstrap, namespace + group)]
            page = await client.get(f"http://127.0.0.1:{port_of(env, 'metrics')}/metrics")
            # One line per series (a gauge kept per worker would carry a pid label and not be found).
            series = {line.rsplit(" ", 1)[0] for line in expected}
            exported[:] = [line for line in page.text.splitlines() if line.rsplit(" ", 1)[0] in series]
            both = all(len(held) == 2 and all(held) for held in members.values())
            return both and sorted(exported) == sorted(expected)

        try:  # the gauges refresh every 15 s
            await wait_for(metrics_counted, timeout_s=60, what="both metrics workers' figures on one page")
        except BaseException:
            print("exported:", exported, "partitions held by each member:", members)
            raise

        down = clm(env, "down")
        stopped = True
        assert "stopped clm up" in down.stderr  # what clm tells the operator is on stderr
        assert await asyncio.wait_for(up.wait(), 120) == 0
        assert not any(port_in_use(port_of(env, name)) for name in SERVICES)
        assert not any(port_in_use(kafka_port + i) for i in range(2 * BROKERS))
    finally:
        if not stopped:
            up.send_signal(signal.SIGINT)
            await asyncio.wait_for(up.wait(), 120)
            clm(env, "down", check=False)  # the nodes, if `clm up` left them
        log.close()
        watch_output("clm up (3 brokers) log", read_log(log_path))
        await drop_schemas(database_url, namespace)
