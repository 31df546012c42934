"""`python -m stage_engine` runs the stage-engine service."""

from clm_shared.service import run_service
from clm_shared.settings import load_settings_or_exit
from stage_engine.app import create_app

if __name__ == "__main__":
    settings = load_settings_or_exit()
    run_service("stage-engine", create_app, workers=settings.stage_engine_workers)
