"""A broker and a database of one's own, on free ports in a scratch folder removed afterwards.

For what must not share the developer's or the test session's servers: benchmarks, and fault tests
that stop, freeze and restart them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clm_cli.infra.kafka import KafkaServer
from clm_cli.infra.postgres import PostgresServer
from clm_cli.infra.process import free_port, two_free_ports


@dataclass
class Infra:
    kafka: KafkaServer
    postgres: PostgresServer
    scratch: Path


@contextmanager
def scratch_infra(prefix: str, cache_dir: Path) -> Iterator[Infra]:
    """Both servers started and ready in a new folder named ``prefix...``; stopped and removed on exit."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connects while the broker starts or is away
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    scratch.chmod(0o755)  # the postgres server user must reach a cluster inside it
    kafka = KafkaServer(cache_dir=cache_dir, data_dir=scratch / "kafka", port=two_free_ports())
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
