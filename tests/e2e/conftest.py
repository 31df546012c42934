"""A real ingest process on a free port, for clients that speak HTTP over a socket."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from clm_cli.infra.process import free_port
from clm_shared.kafka.admin import ensure_topics
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from tests.conftest import TEST_PARTITIONS, drop_schemas, make_settings
from tests.secret_watch import read_log, watch_output


@dataclass
class RunningService:
    url: str
    settings: Settings
    topics: Topics
    env: dict[str, str]


def settings_env(settings: Settings, data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {
        **os.environ,
        "CLM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLM_DATABASE_URL": settings.database_url,
        "CLM_TOPIC_NAMESPACE": settings.topic_namespace,
        "CLM_SCHEMA_NAMESPACE": settings.schema_namespace,
        "CLM_KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "CLM_DATA_DIR": str(data_dir),
        # `clm up` starts a mail sink on this port: never the default 8025 a developer's own sink may hold
        "CLM_SMTP_PORT": str(free_port()),
    }
    env.update({f"CLM_{name.replace('-', '_').upper()}_PORT": str(port) for name, port in ports.items()})
    return env


@pytest.fixture(scope="module")
def ingest_service(kafka_bootstrap: str, database_url: str) -> Iterator[RunningService]:
    namespace = f"t{uuid.uuid4().hex[:10]}_"
    settings = make_settings(kafka_bootstrap, database_url, namespace)
    topics = Topics(namespace)
    asyncio.run(ensure_topics(kafka_bootstrap, {name: TEST_PARTITIONS for name in topics.all()}))
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix="clm-e2e-"))
    env = settings_env(settings, scratch, {"ingest": port})
    log = (scratch / "ingest.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "ingest"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ingest did not become ready:\n" + (scratch / "ingest.log").read_text()[-3000:])
            time.sleep(0.1)
        yield RunningService(url, settings, topics, env)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
        watch_output("ingest service log (e2e)", read_log(scratch / "ingest.log"))
        asyncio.run(drop_schemas(database_url, namespace))
        shutil.rmtree(scratch, ignore_errors=True)


def run_clm(env: dict[str, str], *args: str) -> str:
    """`clm <args>` as an operator runs it, in the given environment; its last line of output."""
    done = subprocess.run(
        [sys.executable, "-m", "clm_cli.main", *args], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def create_key_with_cli(service: RunningService, name: str) -> str:
    """`clm keys create`, as an operator would run it; the key is the last line."""
    return run_clm(service.env, "keys", "create", "--name", name)
