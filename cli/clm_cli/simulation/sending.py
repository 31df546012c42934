"""Send calls to ingest's ``/v1/batch`` at a steady rate, retrying what the server may accept later.

The HTTP client, the clock and ``sleep`` are passed in, so pacing and retries are tested without
a network or waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from clm_cli.simulation.journeys import Call

MAX_BACKOFF_S = 30.0
ABORT_AFTER_FAILED_REQUESTS = 3  # in a row: the ingest is not coming back soon, or refuses our calls


class SendAborted(Exception):
    """Sending cannot go on (a refused write key, or several requests in a row failed)."""


@dataclass
class SendReport:
    requests: int = 0
    requests_failed: int = 0
    retries: int = 0
    events_sent: int = 0
    events_failed: int = 0
    errors: list[str] = field(default_factory=list)  # distinct reasons, in the order first seen


@dataclass(frozen=True)
class Pacing:
    """``rate`` events per second (0: as fast as ingest answers), in requests of at most ``batch_size``."""

    rate: float
    batch_size: int

    def request_size(self) -> int:
        # About ten requests a second at most, so the progress moves smoothly at a low rate.
        if self.rate <= 0:
            return self.batch_size
        return max(1, min(self.batch_size, int(self.rate / 10)))


class BatchSender:
    """Posts batches with the write key as HTTP Basic user name; retries 429, 5xx and broken connections."""

    def __init__(
        self,
        client: httpx.Client,
        write_key: str,
        *,
        attempts: int = 6,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.auth = client, (write_key, "")
        self.attempts, self.sleep, self.monotonic = attempts, sleep, monotonic

    def send(
        self,
        calls: Iterable[Call],
        pacing: Pacing,
        report: SendReport,
        on_sent: Callable[[int], None] = lambda n: None,
    ) -> SendReport:
        """Send every call, counting into ``report`` (complete also when SendAborted is raised).

        ``on_sent`` hears how many events each request settled, sent or failed.
        """
        started = self.monotonic()
        done = failed_in_row = 0
        for batch in _chunks(calls, pacing.request_size()):
            if pacing.rate > 0:
                due = started + done / pacing.rate
                delay = due - self.monotonic()
                if delay > 0:
                    self.sleep(delay)
            error, fatal = self._post(batch, report)
            report.requests += 1
            if error is None:
                report.events_sent += len(batch)
                failed_in_row = 0
            else:
                report.requests_failed += 1
                report.events_failed += len(batch)
                if error not in report.errors:
                    report.errors.append(error)
                failed_in_row += 1
            done += len(batch)
            on_sent(len(batch))
            if error is not None and fatal:
                raise SendAborted(error)
            if failed_in_row >= ABORT_AFTER_FAILED_REQUESTS:
                raise SendAborted(f"{failed_in_row} requests in a row failed; the last: {error}")
        return report

    def _post(self, batch: Sequence[Call], report: SendReport) -> tuple[str | None, bool]:
        """(None, False) when ingest accepted the batch, else why not and whether sending must stop."""
        body = orjson.dumps({"batch": batch})
        headers = {"Content-Type": "application/json"}
        reason = "no attempt"
        for attempt in range(self.attempts):
            if attempt:
                report.retries += 1
            try:
                answer = self.client.post("/v1/batch", content=body, headers=headers, auth=self.auth)
            except httpx.TransportError as exc:
                reason = f"cannot reach ingest ({type(exc).__name__})"
                self.sleep(_backoff(attempt))
                continue
            if answer.status_code == 200:
                return None, False
            if answer.status_code in (401, 403):
                return f"ingest refused the write key ({answer.status_code}): `clm keys create` makes one", True
            reason = f"HTTP {answer.status_code}: {_message(answer)}"
            if answer.status_code != 429 and answer.status_code < 500:
                return reason, False  # the request itself is wrong; sending it again cannot help
            self.sleep(_retry_after(answer) or _backoff(attempt))
        return reason, False


def _chunks(calls: Iterable[Call], size: int) -> Iterator[list[Call]]:
    batch: list[Call] = []
    for call in calls:
        batch.append(call)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _backoff(attempt: int) -> float:
    return min(MAX_BACKOFF_S, 0.5 * 2.0**attempt)


def _retry_after(answer: httpx.Response) -> float | None:
    value = answer.headers.get("Retry-After", "")
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(value)))
    except ValueError:
        return None


def _message(answer: httpx.Response) -> str:
    """The server's own message; never the request, which could echo what was sent."""
    try:
        body: Any = answer.json()
    except ValueError:
        return answer.reason_phrase
    message = body.get("message") if isinstance(body, dict) else None
    return str(message) if message else answer.reason_phrase
