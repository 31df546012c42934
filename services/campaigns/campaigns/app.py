"""The campaigns service's app factory: for now the shared runtime (database, migrations, topics, ops endpoints)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from campaigns.api import router
from clm_shared.service import create_service_app
from clm_shared.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings) -> FastAPI:
    return create_service_app("campaigns", settings, migrations=MIGRATIONS, routers=[router], title="clm Campaigns")
