"""`python -m bench.campaigns.service`: the campaigns service as `python -m campaigns` runs it, with a no-op sender.

The throughput benchmark measures trigger decisions, not SMTP: every due message goes through the
delivery loop (claim, suppression and address checks, the status update, the outbox event), but
the send itself returns at once.
"""

from __future__ import annotations

from fastapi import FastAPI

from campaigns.app import create_app
from campaigns.delivery import Job
from clm_shared.service import run_service
from clm_shared.settings import Settings
from clm_shared.transactions import Db


class NoopSender:
    """A ``Sender`` that does no network I/O."""

    async def __call__(self, job: Job, db: Db) -> None:
        return None


def create_noop_app(settings: Settings) -> FastAPI:
    return create_app(settings, sender=NoopSender())


if __name__ == "__main__":
    run_service("campaigns", create_noop_app)
