"""Alembic environment of campaigns: its history of the tables in `campaigns.tables`."""

from campaigns.tables import metadata
from clm_shared.migrations import run_env

run_env(metadata)
