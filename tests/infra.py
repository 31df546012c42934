"""Where the test suite gets real Kafka and PostgreSQL: the environment, testcontainers, or the native launcher."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clm_cli.infra.kafka import KafkaServer
from clm_cli.infra.postgres import PostgresServer
from clm_cli.infra.process import free_port, two_free_ports

ROOT = Path(__file__).resolve().parent.parent


def docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no client library, no socket, no engine: all mean "use the native launcher"
        return False


def _scratch_dir(name: str) -> Path:
    # World-traversable, so the postgres server user can reach a cluster inside it.
    path = Path(tempfile.mkdtemp(prefix=f"clm-test-{name}-"))
    path.chmod(0o755)
    return path


@contextmanager
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("CLM_KAFKA_BOOTSTRAP"):
        yield os.environ["CLM_KAFKA_BOOTSTRAP"]
        return
    if docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    scratch = _scratch_dir("kafka")
    server = KafkaServer(cache_dir=ROOT / ".cache", data_dir=scratch, port=two_free_ports(), heap_mb=512)
    server.install()
    server.start()
    try:
        server.wait_ready()
        yield server.bootstrap
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def database_url() -> Iterator[str]:
    if os.environ.get("CLM_DATABASE_URL"):
        yield os.environ["CLM_DATABASE_URL"]
        return
    if docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="asyncpg") as container:
            yield container.get_connection_url()
        return
    scratch = _scratch_dir("postgres")
    server = PostgresServer(data_dir=scratch / "pg", port=free_port())
    server.start()
    try:
        server.ensure_database()
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
