"""`python -m campaigns` runs the campaigns service."""

from campaigns.app import create_app
from clm_shared.service import run_service

if __name__ == "__main__":
    run_service("campaigns", create_app)
