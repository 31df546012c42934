"""Alembic environment of ingest."""

from clm_shared.migrations import run_env
from ingest.tables import metadata

run_env(metadata)
