"""The ingest service's app factory."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from clm_shared.service import create_service_app
from clm_shared.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings) -> FastAPI:
    return create_service_app("ingest", settings, migrations=MIGRATIONS, title="clm ingest")
