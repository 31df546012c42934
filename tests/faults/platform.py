"""The whole platform on a broker and a database of its own, and what a run of it leaves behind.

Fault tests stop, freeze and restart the broker and PostgreSQL, so they do not share the session's.
Each run gets its own topic and schema namespace on them and one instance of each of the four
services (``tests.utils.live_platform``), which can be SIGKILLed and started again one by one.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import httpx
import orjson

from campaigns.mail_sink import mail_dir, stored_mail
from clm_cli.infra.scratch import Infra, scratch_infra
from clm_shared.cloudevents import decode
from clm_shared.settings import Settings
from tests.conftest import make_settings
from tests.infra import ROOT
from tests.utils.engine_state import snapshot
from tests.utils.live_platform import SERVICES, LivePlatform, read_all


@contextmanager
def own_infra() -> Iterator[Infra]:
    """A broker and a PostgreSQL server of these tests' own (native: they are stopped and frozen)."""
    with scratch_infra("clm-test-faults-", ROOT / ".cache") as infra:
        yield infra


class Platform(LivePlatform):
    """The four services and the mail sink of one run, once each, in its own namespace on the ``Infra``."""

    def __init__(self, infra: Infra, label: str) -> None:
        settings = make_settings(infra.kafka.bootstrap, infra.postgres.url, f"t{uuid.uuid4().hex[:8]}_")
        scratch = infra.scratch / label
        scratch.mkdir()
        super().__init__(settings, scratch, SERVICES, label="faults")
        self.infra = infra

    async def outcome(self, token: str) -> Outcome:
        """What a run leaves behind, to compare with an undisturbed run of the same traffic."""
        state = await snapshot(self.settings)
        changes = await read_all(self.settings.kafka_bootstrap, self.topics.stage_changes)
        envelopes = [decode(value) for value in changes]
        mails = stored_mail(mail_dir(Settings(data_dir=Path(self.env["CLM_DATA_DIR"]))))
        sent = Counter(
            (parseaddr(str(m.message["To"]))[1], str(m.message["Subject"]), str(m.message["Message-ID"])) for m in mails
        )
        return Outcome(
            customers=state["customers"],
            processed=state["processed"],
            change_ids=Counter(e.id for e in envelopes),
            changes={(e.subject, e.type, orjson.dumps(e.data, option=orjson.OPT_SORT_KEYS)) for e in envelopes},
            mails=sent,
            metrics=self._metrics(token),
        )

    def _metrics(self, token: str) -> dict[str, Any]:
        """Every metric over the traffic's days (model fits, refit on a timer, left out), the funnel, the stages."""
        headers = {"Authorization": f"Bearer {token}"}
        base = self.url("metrics") + "/v1"
        today = datetime.now(UTC).date()
        window = {"from": (today - timedelta(days=3)).isoformat(), "to": today.isoformat()}
        answers = {
            "metrics": httpx.get(base + "/metrics", params=window, headers=headers),
            "funnel": httpx.get(base + "/funnel", headers=headers),
            "stages": httpx.get(base + "/stages", headers=headers),
        }
        for name, answer in answers.items():
            assert answer.status_code == 200, f"{name}: {answer.status_code} {answer.text}"
        values = {name: answer.json() for name, answer in answers.items()}
        for value in values.values():
            value.pop("at", None)  # when the answer was made, not what it says
        values["metrics"]["metrics"] = {
            name: value for name, value in values["metrics"]["metrics"].items() if "predicted" not in name
        }
        return values


@dataclass
class Outcome:
    customers: dict[str, Any]
    processed: int
    change_ids: Counter[str]
    changes: set[tuple[str, str, bytes]]
    mails: Counter[tuple[str, str, str]]
    metrics: dict[str, Any]


def freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)
