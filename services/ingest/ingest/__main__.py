"""`python -m ingest` runs the ingest service."""

from clm_shared.service import run_service
from ingest.app import create_app

if __name__ == "__main__":
    run_service("ingest", create_app)
