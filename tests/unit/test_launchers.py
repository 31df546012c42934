"""The native launchers end with one clear line on the problems an operator can fix."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from clm_cli.infra.kafka import KafkaServer
from clm_cli.infra.postgres import PostgresServer
from clm_cli.infra.process import InfraError, free_port


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_kafka_on_a_taken_port_says_which_port_and_what_to_do(tmp_path: Path, occupied_port: int) -> None:
    server = KafkaServer(cache_dir=tmp_path / "cache", data_dir=tmp_path / "kafka", port=occupied_port)
    with pytest.raises(InfraError, match=rf"port {occupied_port} is taken.*CLM_KAFKA_BOOTSTRAP"):
        server.start()


def test_kafka_without_java_or_maven_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clm_cli.infra.kafka.shutil.which", lambda name: None if name == "mvn" else "/usr/bin/" + name)
    server = KafkaServer(cache_dir=tmp_path / "cache", data_dir=tmp_path / "kafka", port=free_port())
    with pytest.raises(InfraError, match="mvn not found: install Java 17 and Maven"):
        server.install()


def test_postgres_on_a_taken_port_says_which_port_and_what_to_do(occupied_port: int) -> None:
    scratch = Path("/tmp") / f"clm-launcher-test-{occupied_port}"
    server = PostgresServer(data_dir=scratch / "pg", port=occupied_port)
    try:
        with pytest.raises(InfraError, match=rf"port {occupied_port} is taken.*CLM_DATABASE_URL"):
            server.start()
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)


def test_free_ports_are_below_the_range_outgoing_connections_take_theirs_from() -> None:
    from clm_cli.infra.process import free_ports

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_ports(2)
        assert port >= 10000 and port + 1 < low
        for candidate in (port, port + 1):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", candidate))  # both really are free
