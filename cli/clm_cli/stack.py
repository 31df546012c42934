"""The local platform: which infrastructure to run here, and the steps that prepare it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from clm_cli.infra.kafka import KafkaCluster, KafkaServer
from clm_cli.infra.postgres import PostgresServer
from clm_shared.access.tokens import migrate_access
from clm_shared.db import create_engine, service_schema
from clm_shared.kafka.admin import ensure_topics
from clm_shared.migrations import apply_migrations
from clm_shared.settings import Settings
from clm_shared.topics import Topics

# name -> python module: the order `clm up` starts them in.
SERVICES: dict[str, str] = {
    "ingest": "ingest",
    "stage-engine": "stage_engine",
    "metrics": "metrics",
    "campaigns": "campaigns",
}

# The local SMTP sink `clm up` runs besides the services while CLM_SMTP_HOST is unset (not an HTTP service).
MAIL_SINK = "mail-sink"
MAIL_SINK_MODULE = "campaigns.mail_sink"
LOOPBACK = frozenset({"127.0.0.1", "localhost"})


def runs_mail_sink(settings: Settings) -> bool:
    return settings.smtp_host is None


def service_migrations() -> dict[str, Path]:
    """Each service's migration folder, imported from the service itself."""
    from campaigns.app import MIGRATIONS as CAMPAIGNS
    from ingest.app import MIGRATIONS as INGEST
    from metrics.app import MIGRATIONS as METRICS
    from stage_engine.app import MIGRATIONS as STAGE_ENGINE

    return {"ingest": INGEST, "stage-engine": STAGE_ENGINE, "metrics": METRICS, "campaigns": CAMPAIGNS}


@dataclass
class LocalStack:
    """Kafka and PostgreSQL run here unless ``CLM_KAFKA_BOOTSTRAP`` / ``CLM_DATABASE_URL`` name a server."""

    settings: Settings

    def kafka(self) -> KafkaServer | KafkaCluster | None:
        """Ours to run unless ``CLM_KAFKA_BOOTSTRAP`` names a server; with ``CLM_KAFKA_BROKERS`` above 1, a
        bootstrap of one loopback address is where our cluster starts (its first port), not a server."""
        if "kafka_bootstrap" in self.settings.model_fields_set and not self._local_cluster_port():
            return None
        port = int(self.settings.kafka_bootstrap.split(",")[0].rpartition(":")[2])
        if self.settings.kafka_brokers > 1:
            return KafkaCluster(
                cache_dir=self.settings.cache_dir,
                data_dir=self.settings.data_dir / "kafka-cluster",
                port=port,
                brokers=self.settings.kafka_brokers,
                heap_mb=self.settings.kafka_heap_mb,
            )
        return KafkaServer(
            cache_dir=self.settings.cache_dir,
            data_dir=self.settings.data_dir / "kafka",
            port=port,
            heap_mb=self.settings.kafka_heap_mb,
        )

    def _local_cluster_port(self) -> bool:
        """A cluster run here on ports of the operator's choice (a second platform, a test): one address,
        on this machine. A list of servers, or another host, is a cluster run elsewhere."""
        servers = self.settings.kafka_bootstrap.split(",")
        host = servers[0].strip().rpartition(":")[0]
        return self.settings.kafka_brokers > 1 and len(servers) == 1 and host in LOOPBACK

    def for_services(self) -> Settings:
        """The settings the services and the set-up steps run with: with a local cluster, every node as
        bootstrap (a service that starts while node 1 is down still connects) and replicated topics."""
        kafka = self.kafka()
        if not isinstance(kafka, KafkaCluster):
            return self.settings
        update: dict[str, object] = {"kafka_bootstrap": kafka.bootstrap}
        if "kafka_replication_factor" not in self.settings.model_fields_set:
            update["kafka_replication_factor"] = min(3, self.settings.kafka_brokers)
        return self.settings.model_copy(update=update)

    def postgres(self) -> PostgresServer | None:
        if "database_url" in self.settings.model_fields_set:
            return None
        url = urlsplit(self.settings.database_url.replace("+asyncpg", ""))
        return PostgresServer(
            data_dir=self.settings.data_dir / "postgres",
            port=url.port or 5432,
            user=url.username or "clm",
            database=url.path.lstrip("/") or "clm",
        )


async def migrate_all(settings: Settings) -> None:
    """Apply every service's migrations, each in its own schema, and those of the shared access schema."""
    for name, location in service_migrations().items():
        schema = service_schema(settings, name)
        engine = create_engine(settings.database_url, schema=schema, pool_size=1)
        try:
            await apply_migrations(engine, script_location=location, schema=schema)
        finally:
            await engine.dispose()
    engine = create_engine(settings.database_url, schema="public", pool_size=1)
    try:
        await migrate_access(engine, settings)
    finally:
        await engine.dispose()


async def create_topics(settings: Settings) -> None:
    topics = Topics(settings.topic_namespace)
    await ensure_topics(
        settings.kafka_bootstrap,
        {name: settings.kafka_partitions for name in topics.all()},
        replication_factor=settings.kafka_replication_factor,
    )


def prepare(settings: Settings) -> None:
    """Migrations and topics: what must exist before the services start."""
    asyncio.run(migrate_all(settings))
    asyncio.run(create_topics(settings))
