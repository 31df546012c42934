"""What every benchmark needs: its own Kafka and PostgreSQL, a readiness wait, a results file."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from clm_cli.infra.scratch import Infra
from clm_cli.infra.scratch import scratch_infra as infra_in_scratch
from clm_shared.db import create_engine
from clm_shared.kafka.admin import partitions_of
from clm_shared.migrations import apply_migrations
from ingest.app import MIGRATIONS as INGEST_MIGRATIONS
from ingest.keys import create_key

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def scratch_infra(name: str) -> Iterator[Infra]:
    """A broker and a database on free ports in a scratch folder, removed afterwards."""
    with infra_in_scratch(f"clm-bench-{name}-", ROOT / ".cache") as infra:
        yield infra


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


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """Every partition's end offset: what a consumer group must have committed to be done."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in await partitions_of(bootstrap, t)]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends
    finally:
        await consumer.stop()


async def wait_group_stable(bootstrap: str, group: str, members: int, timeout_s: float = 120.0) -> None:
    """Until the group has all its members and no rebalance pending: a member that joins later stops
    the whole group for seconds, which would be counted as the platform's latency."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    began = time.monotonic()
    try:
        while True:
            try:
                described = (await admin.describe_consumer_groups([group]))[0].groups[0]
                state, joined = described[2], len(described[5])
            except Exception:  # the group's coordinator is not there yet
                state, joined = "", 0
            if state == "Stable" and joined >= members:
                return
            if time.monotonic() - began > timeout_s:
                raise SystemExit(f"{group} did not settle with {members} members within {timeout_s:.0f}s")
            await asyncio.sleep(0.25)
    finally:
        await admin.close()


async def wait_consumed(
    bootstrap: str, groups: dict[str, list[str]], ends: dict[TopicPartition, int], timeout_s: float
) -> dict[str, float]:
    """Seconds until each group's committed offsets reach the topics' end offsets.

    Cheap for the machine being measured (one admin request per group and poll), unlike counting rows.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    began = time.monotonic()
    done: dict[str, float] = {}
    try:
        while len(done) < len(groups):
            for group, group_topics in groups.items():
                if group in done:
                    continue
                try:
                    committed = await admin.list_consumer_group_offsets(group)
                except Exception:  # the group's coordinator is not there yet
                    committed = {}
                if all(
                    committed.get(tp) is not None and committed[tp].offset >= end
                    for tp, end in ends.items()
                    if tp.topic in group_topics and end > 0
                ):
                    done[group] = time.monotonic() - began
            if time.monotonic() - began > timeout_s:
                raise SystemExit(f"{', '.join(groups)} did not consume the backlog within {timeout_s:.0f}s")
            await asyncio.sleep(0.25)
    finally:
        await admin.close()
    return done


async def consume_only(
    bootstrap: str, decoders: Mapping[str, Callable[..., object]], total: int, **consumer_options: Any
) -> float:
    """Seconds to fetch ``total`` records of these topics and decode each with its topic's deserializer.

    The ceiling a consumer's rate is compared with: the same backlog, the same decoding, no database.
    """
    consumer = AIOKafkaConsumer(
        *decoders,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        **consumer_options,
    )
    began = time.monotonic()
    await consumer.start()
    seen = 0
    try:
        while seen < total:
            if time.monotonic() - began > 600:
                raise SystemExit(f"the consume-only reader saw {seen:,} of {total:,} records in 600 s")
            for tp, records in (await consumer.getmany(timeout_ms=200, max_records=2000)).items():
                decode = decoders[tp.topic]
                for record in records:
                    decode(record.value, topic=record.topic)
                seen += len(records)
    finally:
        await consumer.stop()
    return time.monotonic() - began


class CpuShares:
    """CPU used by each kind of process while it runs (Linux ``/proc``, sampled every 0.5 s).

    Kinds come from the command line: PostgreSQL, the Kafka broker, and each ``python -m <service>``
    (with its worker processes). Only this benchmark's processes are named: those below this process
    or whose command line (or a parent's) holds ``scope``, the benchmark's scratch folder (PostgreSQL
    detaches from its starter). The benchmark's own load generators and harness are `harness`;
    anything else on the machine, another benchmark's broker included, is `not this benchmark`. A
    process that starts and ends between two samples is missed, which the long-lived servers and
    services measured here do not do.
    """

    def __init__(self, services: Sequence[str], scope: Path) -> None:
        self._services = services
        self._scope = str(scope)
        self._last: dict[tuple[int, int], float] = {}
        self.seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._began = 0.0
        self._sampled = False
        self.elapsed = 0.0

    def __enter__(self) -> CpuShares:
        self._began = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.elapsed = time.monotonic() - self._began

    def shares(self) -> dict[str, float]:
        """Each kind's CPU as a share of one core over the window (1.0 = a whole core)."""
        return {kind: seconds / self.elapsed for kind, seconds in sorted(self.seconds.items(), key=lambda i: -i[1])}

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def _kind(self, pid: str) -> str:
        """The first kind named on the way up the process tree, if that way passes through this benchmark."""
        kind = None
        ours = False
        for _ in range(6):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            except OSError:
                break
            ours = ours or pid == str(os.getpid()) or self._scope in command
            kind = kind or self._named(command)
            if ours or parent in ("0", "1"):
                break
            pid = parent
        if not ours:
            return "not this benchmark"
        return kind or "harness"

    def _named(self, command: str) -> str | None:
        if "postgres" in command:
            return "postgres"
        if "java" in command and "kafka" in command:
            return "kafka"
        for service in self._services:
            if f"-m {service}" in command:
                return service
        return None

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            key = (int(pid), int(fields[19]))  # pid and start time: a reused pid is another process
            used = (int(fields[11]) + int(fields[12])) / tick
            # A process first seen after the first sample started in the window: all its CPU counts.
            before = self._last.get(key, 0.0 if self._sampled else None)
            if before is not None:
                kind = self._kind(pid)
                self.seconds[kind] = self.seconds.get(kind, 0.0) + used - before
            self._last[key] = used
        self._sampled = True


async def ingest_key(database_url: str) -> str:
    """A new write key in ingest's schema (migrated first), for a benchmark's requests."""
    engine = create_engine(database_url, schema="ingest", pool_size=1)
    try:
        await apply_migrations(engine, script_location=INGEST_MIGRATIONS, schema="ingest")
        return await create_key(engine, name=f"bench-{time.time_ns()}")
    finally:
        await engine.dispose()
