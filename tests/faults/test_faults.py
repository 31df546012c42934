"""Faults under a steady load, then recovery, each compared with an undisturbed run of the same traffic.

Every run sends the same shop traffic through ingest (a client that retries what was not
acknowledged, as Segment's libraries do) to the four services on a broker and a database of these
tests' own. A third of the way in, the fault; then the client finishes, the platform settles, and
what it left behind must equal the undisturbed run: every acknowledged event applied exactly once
(the same customer states and processed ids), every stage change on the topic, no campaign mail
sent twice (a mail re-sent after a kill between the SMTP answer and the commit keeps its
Message-ID, which a receiver drops), the same metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from clm_cli.infra.scratch import Infra
from tests.faults.platform import Outcome, Platform, freeze, own_infra, thaw
from tests.secret_watch import remember_secret
from tests.utils.live_platform import SERVICES, Sender, shop_traffic
from tests.waiting import wait_for

CUSTOMERS = 100
START = datetime.now(UTC) - timedelta(minutes=30)
OUTAGE_S = 30

Fault = Callable[[Platform, Sender], Awaitable[None]]


@pytest.fixture(scope="module")
def infra() -> Iterator[Infra]:
    with own_infra() as infra:
        yield infra


@pytest.fixture(scope="module")
def undisturbed(infra: Infra) -> Outcome:
    outcome = asyncio.run(run_traffic(infra, "undisturbed", None)).outcome
    # What the comparisons stand on: every call applied, changes published, mail sent, orders measured.
    assert outcome.processed == sum(len(batch) for batch in shop_traffic(CUSTOMERS, START))
    assert len(outcome.changes) >= 4 * CUSTOMERS
    assert len(outcome.mails) >= CUSTOMERS
    assert outcome.metrics["funnel"]["stages"][-1]["reached"] == CUSTOMERS
    return outcome


class Run:
    def __init__(self, outcome: Outcome, sender: Sender) -> None:
        self.outcome = outcome
        self.sender = sender


async def run_traffic(infra: Infra, label: str, fault: Fault | None) -> Run:
    platform = Platform(infra, label)
    try:
        await platform.start_all()
        key = remember_secret(platform.cli("keys", "create", "--name", "shop"))
        token = remember_secret(platform.cli("tokens", "create", "--name", "faults", "--role", "read"))
        sender = Sender(platform.url("ingest"), key, shop_traffic(CUSTOMERS, START))
        sending = asyncio.create_task(sender.run())
        if fault is not None:
            await wait_for(lambda: sender.acked >= len(sender.batches) // 3 or sending.done(), what="a third sent")
            assert not sending.done(), "the traffic ended before the fault: the test proves nothing"
            await fault(platform, sender)
        try:
            await asyncio.wait_for(asyncio.shield(sending), timeout=150)
        except TimeoutError:
            pytest.fail(
                f"the traffic did not get through: {sender.acked} of {len(sender.batches)} batches acknowledged,"
                f" refusals {dict(sender.refused)}, the last: {sender.last_refusal[:300]}\n"
                + platform.log_tail("ingest")
            )
        await platform.settled()
        return Run(await platform.outcome(token), sender)
    finally:
        platform.stop_all()


def kill_and_restart(name: str) -> Fault:
    async def fault(platform: Platform, sender: Sender) -> None:
        platform.kill(name)
        await platform.start(name)

    return fault


async def broker_restart(platform: Platform, sender: Sender) -> None:
    kafka = platform.infra.kafka
    await asyncio.to_thread(kafka.stop)
    await asyncio.to_thread(kafka.start)
    await asyncio.to_thread(kafka.wait_ready)


async def postgres_restart(platform: Platform, sender: Sender) -> None:
    postgres = platform.infra.postgres
    await asyncio.to_thread(postgres.stop)
    await asyncio.to_thread(postgres.start)


async def broker_unreachable(platform: Platform, sender: Sender) -> None:
    """The broker frozen (SIGSTOP): connections open, nothing answers, for OUTAGE_S; ingest must answer 503."""
    pid = platform.infra.kafka.running_pid()
    assert pid is not None
    frozen_at = time.monotonic()
    freeze(pid)
    try:
        await wait_for(lambda: sender.refused["503"] > 0, timeout_s=OUTAGE_S, what="ingest answering 503")
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - frozen_at)))  # the outage's length is the fault
    finally:
        thaw(pid)


FAULTS: dict[str, Fault] = {
    **{f"sigkill-{name}": kill_and_restart(name) for name in SERVICES},
    "broker-restart": broker_restart,
    "postgres-restart": postgres_restart,
    "broker-unreachable-30s": broker_unreachable,
}


@pytest.mark.timeout(600)  # a service start-up or a broker's recovery is slow on a busy 2-core machine
@pytest.mark.parametrize("name", list(FAULTS))
async def test_after_the_fault_the_platform_holds_what_an_undisturbed_run_holds(
    name: str, infra: Infra, undisturbed: Outcome
) -> None:
    run = await run_traffic(infra, name, FAULTS[name])
    outcome = run.outcome
    assert run.sender.acked == len(run.sender.batches)
    if name == "broker-unreachable-30s":
        assert run.sender.refused["503"] > 0
    # Every acknowledged event applied exactly once: the same states, the same messageIds remembered.
    assert outcome.processed == undisturbed.processed
    assert outcome.customers == undisturbed.customers
    # Every stage and health change on the topic (a re-publish after a crash repeats an id, never a change).
    assert outcome.changes == undisturbed.changes
    assert len(outcome.change_ids) == len(outcome.changes)
    # No mail sent twice: one Message-ID per recipient and subject, and the same mails as undisturbed.
    assert set(_sends(outcome)) == set(_sends(undisturbed))
    assert all(len(ids) == 1 for ids in _sends(outcome).values())
    assert outcome.metrics == undisturbed.metrics


def _sends(outcome: Outcome) -> dict[tuple[str, str], set[str]]:
    sends: dict[tuple[str, str], set[str]] = {}
    for to, subject, message_id in outcome.mails:
        sends.setdefault((to, subject), set()).add(message_id)
    return sends
