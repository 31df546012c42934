"""Alembic environment of the test consumer (the toolkit's tables, as a service's migration makes them)."""

from clm_shared.migrations import run_env
from tests.utils.toolkit_consumer import metadata

run_env(metadata)
