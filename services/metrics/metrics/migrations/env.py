"""Alembic environment of the metrics service."""

from clm_shared.migrations import run_env
from metrics.tables import metadata

run_env(metadata)
