"""Alembic environment of the stage engine."""

from clm_shared.migrations import run_env
from stage_engine.tables import metadata

run_env(metadata)
