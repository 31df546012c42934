"""Alembic environment of stage-engine: no tables yet, so the history is empty."""

from sqlalchemy import MetaData

from clm_shared.migrations import run_env

run_env(MetaData())
