"""`python -m campaigns` runs the campaigns service."""

from clm_shared.service import run_service
from campaigns.app import create_app

if __name__ == "__main__":
    run_service("campaigns", create_app)
