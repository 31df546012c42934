"""Apache Kafka (KRaft, combined broker and controller nodes) from Maven Central jars, as local processes.

One node (``KafkaServer``) for `clm up` and the tests; several (``KafkaCluster``) to run the replicated case
(replication factor 3, ``min.insync.replicas`` 2) on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from clm_cli.infra.process import InfraError, alive, port_in_use, read_pid, run, tail, terminate, write_pid
from clm_shared.kafka.admin import broker_reachable, cluster_brokers, min_insync_replicas

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"
CLUSTER_ID = "Y2xtLWxvY2FsLWNsdXN0ZXIx"  # fixed: every node of a local cluster is formatted with the same id

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.clm</groupId><artifactId>kafka-broker-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>{slf4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.startup.name = kafka.server.KafkaRaftServer
logger.startup.level = INFO
"""

_PROPERTIES = """# Written by clm: one combined broker and controller node for local runs and tests.
process.roles=broker,controller
node.id={node_id}
{quorum}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
num.partitions=1
auto.create.topics.enable=false
default.replication.factor={replicas}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=4
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
log.cleaner.dedupe.buffer.size={cleaner_buffer}
"""


# Kafka's own default; the log cleaner allocates it from the heap at start-up, whatever the heap.
CLEANER_BUFFER_MAX = 128 * 1024 * 1024


def cleaner_buffer_bytes(heap_mb: int) -> int:
    """A quarter of the heap, at most Kafka's default: with the default, a 128 MB heap (the least
    ``CLM_KAFKA_HEAP_MB`` allows) ran out of memory at start-up, and a 320 MB one kept 40% of it aside."""
    return min(CLEANER_BUFFER_MAX, heap_mb * 1024 * 1024 // 4)


@dataclass
class KafkaServer:
    """One local node: jars cached under ``cache_dir``, data and logs under ``data_dir``.

    Alone it is its own quorum (``--standalone``); as a member of a ``KafkaCluster`` it gets the static
    ``voters`` (node id, controller port) of every node and the cluster's replication factor.
    """

    cache_dir: Path
    data_dir: Path
    port: int = 9092
    heap_mb: int = 512
    node_id: int = 1
    voters: tuple[tuple[int, int], ...] = ()
    replicas: int = 1

    def __post_init__(self) -> None:
        self.cache_dir = self.cache_dir.resolve()
        self.data_dir = self.data_dir.resolve()

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    def install(self) -> bool:
        """Fetch the broker's jars with Maven once; False when the cache already had them."""
        marker = self.libs_dir / ".complete"
        if marker.exists():
            return False
        java, mvn = shutil.which("java"), shutil.which("mvn")
        if not java or not mvn:
            missing = " and ".join(name for name, path in (("java", java), ("mvn", mvn)) if not path)
            raise InfraError(
                f"{missing} not found: install Java 17 and Maven (apt-get install openjdk-17-jre-headless maven)"
            )
        work = self.libs_dir.parent
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION, slf4j=SLF4J_VERSION))
        staging = work / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(work / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DexcludeArtifactIds=reload4j,slf4j-reload4j",
            ],
            what=f"downloading Kafka {KAFKA_VERSION} jars with Maven",
            hint="Check that Maven can reach its package registry (mvn -v; ~/.m2/settings.xml), then retry.",
        )
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)
        marker.touch()
        return True

    def _java(self, main: str, *args: str, heap: str = "-Xmx256m") -> list[str]:
        return [
            "java",
            heap,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{self.libs_dir}/*",
            main,
            *args,
        ]

    def _configure(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        properties = self.data_dir / "server.properties"
        if self.voters:
            voters = ",".join(f"{node}@127.0.0.1:{port}" for node, port in self.voters)
            quorum = f"controller.quorum.voters={voters}"
        else:
            quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"
        properties.write_text(
            _PROPERTIES.format(
                node_id=self.node_id,
                quorum=quorum,
                port=self.port,
                controller_port=self.controller_port,
                log_dir=self.data_dir / "logs",
                replicas=self.replicas,
                min_isr=min_insync_replicas(self.replicas),
                cleaner_buffer=cleaner_buffer_bytes(self.heap_mb),
            )
        )
        return properties

    def running_pid(self) -> int | None:
        return read_pid(self.pid_file)

    def start(self) -> bool:
        """Start the broker in the background; False when ours was already running."""
        if self.running_pid():
            return False
        for port in (self.port, self.controller_port):
            if port_in_use(port):
                raise InfraError(
                    f"port {port} is taken by another program: stop it, or point CLM_KAFKA_BOOTSTRAP at a broker"
                )
        properties = self._configure()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            # A static quorum (controller.quorum.voters) is formatted without naming the controllers.
            standalone = [] if self.voters else ["--standalone"]
            run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    CLUSTER_ID,
                    "-c",
                    str(properties),
                    *standalone,
                    "--ignore-formatted",
                ),
                what="formatting Kafka storage",
                hint=f"Remove {self.data_dir / 'logs'} if it holds another cluster's data.",
            )
        with self.log_file.open("ab") as out:
            process = subprocess.Popen(
                self._java("kafka.Kafka", str(properties), heap=f"-Xmx{self.heap_mb}m"),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not the broker's
            )
        write_pid(self.pid_file, process.pid)
        return True

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until the broker answers a metadata request (never a fixed sleep)."""
        deadline = time.monotonic() + timeout_s
        while not asyncio.run(broker_reachable(self.bootstrap, timeout_s=2.0)):
            if not self.running_pid():
                raise InfraError(
                    f"Kafka exited during start-up; its log ({self.log_file}) ends:\n{tail(self.log_file)}"
                )
            if time.monotonic() > deadline:
                raise InfraError(f"Kafka did not answer within {timeout_s:.0f}s; see {self.log_file}")
            time.sleep(0.25)

    def stop(self) -> bool:
        pid = self.running_pid()
        if pid is None:
            return False
        terminate(pid, timeout_s=30)
        self._forget(pid)
        return True

    def kill(self) -> bool:
        """SIGKILL, as a crashed machine would end: no controlled shutdown, no leadership handed over."""
        pid = self.running_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the node leads a session of its own (start_new_session)
        while alive(pid):
            time.sleep(0.05)
        self._forget(pid)
        return True

    def _forget(self, pid: int) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it was our own child
        self.pid_file.unlink(missing_ok=True)


@dataclass
class KafkaCluster:
    """``brokers`` combined nodes on one machine, node n on ``port + 2(n-1)`` (its controller on the next port).

    Topics are replicated ``min(3, brokers)`` times and need two in-sync copies to acknowledge a write, so
    one node may be killed without an acknowledged record being lost. Small heaps: it shares a laptop.
    """

    cache_dir: Path
    data_dir: Path
    port: int = 9092
    brokers: int = 3
    heap_mb: int = 320
    nodes: list[KafkaServer] = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        voters = tuple((n, self.port + 2 * (n - 1) + 1) for n in range(1, self.brokers + 1))
        self.nodes = [
            KafkaServer(
                cache_dir=self.cache_dir,
                data_dir=self.data_dir / f"node-{n}",
                port=self.port + 2 * (n - 1),
                heap_mb=self.heap_mb,
                node_id=n,
                voters=voters,
                replicas=min(3, self.brokers),
            )
            for n in range(1, self.brokers + 1)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def libs_dir(self) -> Path:
        return self.nodes[0].libs_dir

    def node(self, node_id: int) -> KafkaServer:
        return self.nodes[node_id - 1]

    def install(self) -> bool:
        return self.nodes[0].install()

    def start(self) -> bool:
        """Start every node that is not running (formatting them side by side); False when all already were."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            return any(list(pool.map(KafkaServer.start, self.nodes)))

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until every node answers and the cluster's metadata lists all of them."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            node.wait_ready(max(1.0, deadline - time.monotonic()))
        while len(asyncio.run(cluster_brokers(self.bootstrap))) < self.brokers:
            if time.monotonic() > deadline:
                raise InfraError(f"the Kafka cluster did not list {self.brokers} brokers within {timeout_s:.0f}s")
            time.sleep(0.25)

    def stop(self) -> bool:
        """Stop the nodes together: one by one, the last would wait for a quorum that is already gone."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            return any(list(pool.map(KafkaServer.stop, self.nodes)))
