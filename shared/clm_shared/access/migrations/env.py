"""Alembic environment of the shared access schema (API tokens)."""

from clm_shared.access.tables import metadata
from clm_shared.migrations import run_env

run_env(metadata)
