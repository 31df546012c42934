"""Pacing, retries and refusals of the batch sender, against an in-memory transport and a fake clock."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from clm_cli.main import app
from clm_cli.simulation.journeys import Call
from clm_cli.simulation.sending import BatchSender, Pacing, SendAborted, SendReport

KEY = "clmwk_unit-test-key"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def calls(n: int) -> list[Call]:
    return [{"type": "track", "event": "Ad Impression", "anonymousId": "a", "messageId": f"m{i}"} for i in range(n)]


def sender(answer: Callable[[httpx.Request], httpx.Response], clock: FakeClock) -> BatchSender:
    client = httpx.Client(transport=httpx.MockTransport(answer), base_url="http://ingest")
    return BatchSender(client, KEY, sleep=clock.sleep, monotonic=clock.monotonic)


def accept(received: list[list[Call]]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/batch"
        assert request.headers["authorization"] == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
        received.append(orjson.loads(request.content)["batch"])
        return httpx.Response(200, json={"success": True})

    return answer


def test_events_go_out_in_order_at_the_rate_asked_for() -> None:
    clock, received, settled = FakeClock(), list[list[Call]](), list[int]()
    report = sender(accept(received), clock).send(
        calls(1000), Pacing(rate=100, batch_size=100), SendReport(), settled.append
    )
    assert [c["messageId"] for batch in received for c in batch] == [f"m{i}" for i in range(1000)]
    assert {len(batch) for batch in received} == {10}  # about ten requests a second
    assert clock.now == pytest.approx(9.9)  # the last request is due 990 events in
    assert (report.events_sent, report.requests, report.requests_failed, sum(settled)) == (1000, 100, 0, 1000)


def test_rate_zero_sends_full_batches_without_waiting() -> None:
    clock, received = FakeClock(), list[list[Call]]()
    sender(accept(received), clock).send(calls(250), Pacing(rate=0, batch_size=100), SendReport())
    assert [len(b) for b in received] == [100, 100, 50]
    assert clock.slept == []


def test_unavailable_and_unreachable_are_retried_honouring_retry_after() -> None:
    clock, answers = FakeClock(), iter(["503", "down", "200"])

    def answer(request: httpx.Request) -> httpx.Response:
        step = next(answers)
        if step == "down":
            raise httpx.ConnectError("refused", request=request)
        if step == "503":
            return httpx.Response(503, headers={"Retry-After": "5"}, json={"success": False, "message": "away"})
        return httpx.Response(200, json={"success": True})

    report = sender(answer, clock).send(calls(5), Pacing(rate=0, batch_size=100), SendReport())
    assert (report.events_sent, report.retries, report.requests_failed) == (5, 2, 0)
    assert clock.slept == [5.0, 1.0]  # Retry-After, then the second step of the backoff


def test_an_invalid_batch_is_not_retried_and_three_failures_in_a_row_stop_the_run() -> None:
    clock, seen = FakeClock(), list[int]()

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        return httpx.Response(422, json={"success": False, "message": "the batch has invalid events", "errors": []})

    report = SendReport()
    with pytest.raises(SendAborted, match="3 requests in a row failed"):
        sender(answer, clock).send(calls(50), Pacing(rate=0, batch_size=10), report)
    assert (len(seen), report.requests_failed, report.events_failed, report.retries) == (3, 3, 30, 0)
    assert report.errors == ["HTTP 422: the batch has invalid events"]


def test_a_refused_write_key_stops_at_once_without_showing_the_key() -> None:
    report = SendReport()
    with pytest.raises(SendAborted) as refused:
        sender(lambda r: httpx.Response(401, json={"success": False}), FakeClock()).send(
            calls(30), Pacing(rate=0, batch_size=10), report
        )
    assert "write key" in str(refused.value) and KEY not in str(refused.value)
    assert (report.requests, report.events_failed) == (1, 10)


def test_the_command_needs_a_write_key_and_a_dry_run_needs_none() -> None:
    runner = CliRunner()
    dry = runner.invoke(app, ["simulate", "--customers", "20", "--dry-run"], env={"CLM_WRITE_KEY": ""})
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and "Signed Up" in dry.output
    missing = runner.invoke(app, ["simulate", "--customers", "2"], env={"CLM_WRITE_KEY": ""})
    assert missing.exit_code == 2 and "clm keys create" in missing.output
    bad = runner.invoke(app, ["simulate", "--dry-run", "--set", "abandon_cart=2"])
    assert bad.exit_code == 2 and "abandon_cart" in bad.output
    listed = runner.invoke(app, ["simulate", "--tunables"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "abandon_cart" in listed.output and "win_back" in listed.output
