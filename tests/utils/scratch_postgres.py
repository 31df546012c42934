"""A PostgreSQL server of one test's own, for tests that stop and restart it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from clm_cli.infra.postgres import PostgresServer
from clm_cli.infra.process import free_port
from tests.infra import _scratch_dir


@contextmanager
def scratch_postgres() -> Iterator[PostgresServer]:
    scratch = _scratch_dir("pg-restart")
    server = PostgresServer(data_dir=scratch / "pg", port=free_port())
    server.start()
    try:
        server.ensure_database()
        yield server
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
