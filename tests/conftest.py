"""Session-wide real Kafka and PostgreSQL; each test gets its own topics and schemas."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import text

from clm_shared.access.tables import ACCESS_SCHEMA
from clm_shared.db import SERVICE_SCHEMAS, create_engine
from clm_shared.kafka.admin import ensure_topics
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from tests import infra

pytest_plugins = ["tests.secret_watch", "pytester"]

TEST_PARTITIONS = 2


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    with infra.kafka_bootstrap() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with infra.database_url() as url:
        yield url


@pytest.fixture
def namespace() -> str:
    """A prefix unique to one test, for its topics and schemas."""
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.fixture
async def topics(kafka_bootstrap: str, namespace: str) -> Topics:
    topics = Topics(namespace)
    await ensure_topics(kafka_bootstrap, {name: TEST_PARTITIONS for name in topics.all()})
    return topics


def make_settings(kafka_bootstrap: str, database_url: str, namespace: str) -> Settings:
    """Settings pointing at the test infrastructure, isolated under a namespace."""
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        topic_namespace=namespace,
        schema_namespace=namespace,
        kafka_partitions=TEST_PARTITIONS,
    )


async def drop_schemas(database_url: str, namespace: str) -> None:
    engine = create_engine(database_url, schema="public", pool_size=1)
    async with engine.begin() as conn:
        for schema in [*SERVICE_SCHEMAS.values(), ACCESS_SCHEMA]:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{namespace}{schema}" CASCADE'))
    await engine.dispose()


@pytest.fixture
async def settings(kafka_bootstrap: str, database_url: str, namespace: str) -> AsyncIterator[Settings]:
    """This test's settings; its schemas are dropped after."""
    yield make_settings(kafka_bootstrap, database_url, namespace)
    await drop_schemas(database_url, namespace)
