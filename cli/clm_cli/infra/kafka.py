"""Apache Kafka (KRaft, one combined broker and controller) from Maven Central jars, as a local process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from clm_cli.infra.process import InfraError, port_in_use, read_pid, run, tail, terminate, write_pid
from clm_shared.kafka.admin import broker_reachable

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"
CLUSTER_ID = "Y2xtLWxvY2FsLWNsdXN0ZXIx"  # fixed: a local single-node cluster formats once

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

_PROPERTIES = """# Written by clm: one combined broker and controller for local runs and tests.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
"""


@dataclass
class KafkaServer:
    """One local broker: jars cached under ``cache_dir``, data and logs under ``data_dir``."""

    cache_dir: Path
    data_dir: Path
    port: int = 9092
    heap_mb: int = 512

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
        properties.write_text(
            _PROPERTIES.format(port=self.port, controller_port=self.controller_port, log_dir=self.data_dir / "logs")
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
            run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    CLUSTER_ID,
                    "-c",
                    str(properties),
                    "--standalone",
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
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it was our own child
        self.pid_file.unlink(missing_ok=True)
        return True
