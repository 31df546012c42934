"""`python -m ingest` runs the ingest service."""

from clm_shared.service import run_service
from clm_shared.settings import load_settings_or_exit
from ingest.app import create_app

if __name__ == "__main__":
    settings = load_settings_or_exit()
    run_service("ingest", create_app, workers=settings.ingest_workers)
