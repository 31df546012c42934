"""`python -m stage_engine` runs the stage-engine service."""

from clm_shared.service import run_service
from stage_engine.app import create_app

if __name__ == "__main__":
    run_service("stage-engine", create_app)
