"""The native launchers end with one clear line on the problems an operator can fix."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from clm_cli.infra.kafka import KafkaCluster, KafkaServer
from clm_cli.infra.postgres import PostgresServer
from clm_cli.infra.process import InfraError, free_port
from clm_cli.stack import LocalStack
from clm_shared.settings import Settings


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


def _properties(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_a_three_node_cluster_is_one_static_quorum_with_three_copies_and_two_in_sync(tmp_path: Path) -> None:
    cluster = KafkaCluster(cache_dir=tmp_path / "cache", data_dir=tmp_path / "kafka", port=20000)
    assert cluster.bootstrap == "127.0.0.1:20000,127.0.0.1:20002,127.0.0.1:20004"
    for node in cluster.nodes:
        conf = _properties(node._configure())
        assert conf["node.id"] == str(node.node_id)
        assert conf["controller.quorum.voters"] == "1@127.0.0.1:20001,2@127.0.0.1:20003,3@127.0.0.1:20005"
        assert conf["listeners"] == f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.port + 1}"
        assert conf["log.dirs"] == str(tmp_path / "kafka" / f"node-{node.node_id}" / "logs")
        for name in ("default.replication.factor", "offsets.topic.replication.factor"):
            assert conf[name] == "3"
        assert conf["transaction.state.log.replication.factor"] == "3"
        assert conf["min.insync.replicas"] == conf["transaction.state.log.min.isr"] == "2"


def test_a_single_server_stays_its_own_standalone_quorum(tmp_path: Path) -> None:
    conf = _properties(KafkaServer(cache_dir=tmp_path, data_dir=tmp_path / "kafka", port=20000)._configure())
    assert conf["controller.quorum.bootstrap.servers"] == "127.0.0.1:20001"
    assert "controller.quorum.voters" not in conf
    assert conf["min.insync.replicas"] == conf["offsets.topic.replication.factor"] == "1"


def test_clm_up_runs_a_cluster_when_told_to_and_none_when_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLM_KAFKA_BOOTSTRAP", raising=False)
    cluster = LocalStack(Settings(kafka_brokers=3, data_dir=tmp_path)).kafka()
    assert isinstance(cluster, KafkaCluster)
    assert cluster.bootstrap == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert isinstance(LocalStack(Settings(data_dir=tmp_path)).kafka(), KafkaServer)
    assert LocalStack(Settings(kafka_bootstrap="a:9092,b:9092,c:9092", kafka_brokers=3)).kafka() is None


def test_a_local_cluster_starts_at_a_loopback_bootstrap_of_the_operators_choosing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second platform (or a test) runs its cluster on free ports: one loopback address is its first port."""
    monkeypatch.delenv("CLM_KAFKA_REPLICATION_FACTOR", raising=False)
    for host in ("127.0.0.1", "localhost"):
        stack = LocalStack(Settings(kafka_bootstrap=f"{host}:30000", kafka_brokers=3, data_dir=tmp_path))
        cluster = stack.kafka()
        assert isinstance(cluster, KafkaCluster)
        assert cluster.bootstrap == "127.0.0.1:30000,127.0.0.1:30002,127.0.0.1:30004"
        assert stack.for_services().kafka_bootstrap == cluster.bootstrap
        assert stack.for_services().kafka_replication_factor == 3
    # one broker named, another machine, or a list: a Kafka run elsewhere, as before
    assert LocalStack(Settings(kafka_bootstrap="127.0.0.1:30000", data_dir=tmp_path)).kafka() is None
    assert LocalStack(Settings(kafka_bootstrap="kafka.internal:9092", kafka_brokers=3)).kafka() is None
    assert LocalStack(Settings(kafka_bootstrap="127.0.0.1:1,127.0.0.1:3", kafka_brokers=3)).kafka() is None


def test_the_log_cleaner_buffer_fits_a_small_heap(tmp_path: Path) -> None:
    """Kafka's default 128 MB cleaner buffer, allocated at start-up, left a 128 MB heap out of memory."""
    for heap_mb, buffer_mb in ((128, 32), (320, 80), (512, 128), (2048, 128)):
        node = KafkaServer(cache_dir=tmp_path, data_dir=tmp_path / f"kafka-{heap_mb}", port=20000, heap_mb=heap_mb)
        assert _properties(node._configure())["log.cleaner.dedupe.buffer.size"] == str(buffer_mb * 1024 * 1024)


def test_the_services_of_a_local_cluster_get_every_node_and_replicated_topics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLM_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("CLM_KAFKA_REPLICATION_FACTOR", raising=False)
    running = LocalStack(Settings(kafka_brokers=3, data_dir=tmp_path)).for_services()
    assert running.kafka_bootstrap == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert running.kafka_replication_factor == 3
    chosen = LocalStack(Settings(kafka_brokers=3, kafka_replication_factor=2, data_dir=tmp_path)).for_services()
    assert chosen.kafka_replication_factor == 2
    single = Settings(data_dir=tmp_path)
    assert LocalStack(single).for_services() is single
