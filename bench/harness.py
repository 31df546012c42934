"""What every benchmark needs: its own Kafka and PostgreSQL, a readiness wait, a results file."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from clm_cli.infra.kafka import KafkaServer
from clm_cli.infra.postgres import PostgresServer
from clm_cli.infra.process import free_port, two_free_ports

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Infra:
    kafka: KafkaServer
    postgres: PostgresServer
    scratch: Path


@contextmanager
def scratch_infra(name: str) -> Iterator[Infra]:
    """A broker and a database on free ports in a scratch folder, removed afterwards."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connects while the broker starts
    scratch = Path(tempfile.mkdtemp(prefix=f"clm-bench-{name}-"))
    scratch.chmod(0o755)
    kafka = KafkaServer(cache_dir=ROOT / ".cache", data_dir=scratch / "kafka", port=two_free_ports())
    postgres = PostgresServer(data_dir=scratch / "pg", port=free_port())
    kafka.install()
    kafka.start()
    postgres.start()
    try:
        kafka.wait_ready()
        postgres.ensure_database()
        yield Infra(kafka, postgres, scratch)
    finally:
        kafka.stop()
        postgres.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready within {timeout_s:.0f}s")


def write_results(name: str, summary: dict[str, Any]) -> None:
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"  written to {out.relative_to(ROOT)}")
