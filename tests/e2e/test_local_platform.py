"""`clm up` and the service processes, over HTTP, against the real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from clm_cli.infra.process import free_port, port_in_use
from clm_cli.stack import SERVICES
from clm_shared.settings import Settings
from tests.e2e.conftest import settings_env
from tests.secret_watch import read_log, remember_secret, watch_output
from tests.waiting import wait_for


async def status(client: httpx.AsyncClient, port: int, path: str) -> int:
    try:
        return (await client.get(f"http://127.0.0.1:{port}{path}")).status_code
    except httpx.HTTPError:
        return 0


def answers_ok(client: httpx.AsyncClient, port: int, path: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await status(client, port, path) == 200

    return check


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


async def test_clm_up_brings_all_four_services_to_ready_and_sigint_stops_them(
    settings: Settings, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    ports = {name: free_port() for name in SERVICES}
    env = settings_env(settings, tmp_path, ports)
    log = (tmp_path / "up.log").open("wb")
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clm_cli.main", "up", env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        for name, port in ports.items():
            await wait_for(answers_ok(client, port, "/readyz"), timeout_s=90, what=f"{name} ready")
            health = (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
            assert health == {"status": "ok", "service": name}
            ready = (await client.get(f"http://127.0.0.1:{port}/readyz")).json()
            groups = {
                "stage-engine": ["stage-engine"],
                "metrics": ["metrics", "metrics-lifecycle"],
                "campaigns": ["campaigns", "campaigns-lifecycle"],
            }.get(name, [])
            consumers = {f"consumer:{group}": True for group in groups}
            assert ready["checks"] == {"postgres": True, "kafka": True, "topics": True, **consumers}
            metrics = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "process_cpu_seconds_total" in metrics.text

        # Without CLM_ADMIN_TOKEN, `clm up` generated one that the services accept; nothing else is.
        admin = remember_secret((tmp_path / "admin-token").read_text().strip())
        customers = f"http://127.0.0.1:{ports['stage-engine']}/v1/customers"
        assert (await client.get(customers)).status_code == 401
        assert (await client.get(customers, headers={"Authorization": f"Bearer {admin}"})).status_code == 200

        # A second `clm up` while everything is up breaks nothing.
        again = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clm_cli.main",
            "up",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(again.communicate(), 60)
        assert again.returncode == 0, output.decode()
        assert b"all four services are already running" in output
        for port in ports.values():
            assert await status(client, port, "/readyz") == 200
    finally:
        up.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(up.wait(), 60)
        log.close()
        watch_output("clm up log", read_log(tmp_path / "up.log"))
    assert code == 0, (tmp_path / "up.log").read_text()
    assert not any(port_in_use(port) for port in ports.values())
    assert "ready in" in (tmp_path / "up.log").read_text()
    generated = remember_secret((tmp_path / "admin-token").read_text().strip())
    assert "admin token: in" in (tmp_path / "up.log").read_text()
    assert generated not in (tmp_path / "up.log").read_text()


async def test_a_service_starts_without_kafka_and_reports_not_ready(
    settings: Settings, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    port = free_port()
    dead_kafka = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    env = settings_env(dead_kafka, tmp_path, {"ingest": port})
    log = (tmp_path / "ingest.log").open("wb")
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingest", env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_for(answers_ok(client, port, "/healthz"), timeout_s=60, what="ingest alive")
        answer = await client.get(f"http://127.0.0.1:{port}/readyz")
        assert answer.status_code == 503
        assert answer.json()["checks"]["kafka"] is False
        assert answer.json()["checks"]["postgres"] is True
    finally:
        service.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert await asyncio.wait_for(service.wait(), 30) in (0, -signal.SIGTERM)
        log.close()
    assert "Application shutdown complete" in (tmp_path / "ingest.log").read_text()
