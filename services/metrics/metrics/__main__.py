"""`python -m metrics` runs the metrics service."""

from clm_shared.service import run_service
from clm_shared.settings import load_settings_or_exit
from metrics.app import create_app

if __name__ == "__main__":
    run_service("metrics", create_app, workers=load_settings_or_exit().metrics_workers)
