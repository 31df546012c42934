"""Due waits and due sends: the two loops that move runs on time and deliver their messages.

``TimerRound`` claims due run timers (``FOR UPDATE SKIP LOCKED``) and lets ``Journeys`` move those
runs. ``DeliveryRound`` claims due pending messages the same way, checks suppression and address,
sends them on their channel while the rows stay locked, and in that one transaction marks them sent
(publishing ``clm.campaign.sent`` through the outbox), reschedules them with exponential backoff, or
marks them failed (``clm.campaign.failed``). A crash before the commit leaves the rows pending, so
nothing is lost; the deterministic Message-ID and delivery id let a receiver drop the rare repeat.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
import structlog
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from campaigns import store
from campaigns.channels import PermanentFailure, RecipientRefused, TransientFailure
from campaigns.consumers import Decisions, suppress
from campaigns.definitions import Campaign, SendStep
from campaigns.journeys import Profile
from campaigns.registry import versions
from campaigns.templates import TemplateError
from clm_shared.schemas.lifecycle import CampaignFailed, CampaignSent, EventType
from clm_shared.transactions import Db, transaction

log = structlog.get_logger(__name__)

SENDS = PromCounter("clm_campaigns_sends_total", "Campaign messages by outcome.", ["outcome"])
SEND_DELAY = Histogram(
    "clm_campaigns_send_delay_seconds",
    "From a message's due time to its send.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)


@dataclass(frozen=True)
class Job:
    """One message to send, with what its template needs."""

    message_id: int
    run_id: int | None
    campaign: Campaign
    version: int
    step: SendStep
    customer_id: str
    profile: Profile
    variant: str | None
    trigger: dict[str, Any]
    due_at: datetime


class Sender(Protocol):
    """Renders and sends one job; raises TransientFailure (retry) or PermanentFailure (give up)."""

    async def __call__(self, job: Job, db: Db) -> None: ...


class SerializedDb:
    """The round's connection for concurrent senders: their queries take turns (asyncpg allows one at a time)."""

    def __init__(self, db: Db) -> None:
        self._db = db
        self._turn = asyncio.Lock()

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        async with self._turn:
            return list(await self._db.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Any:
        async with self._turn:
            return await self._db.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self._turn:
            return await self._db.fetchval(query, *args)


@dataclass
class TimerRound:
    engine: AsyncEngine
    decisions: Decisions
    batch: int = 500
    wake: Callable[[], None] | None = None  # the delivery loop, when a wait ended in a send

    async def __call__(self) -> bool:
        now = self.decisions.clock()
        async with transaction(self.engine) as db:
            claimed = await store.TIMERS.claim_due(db, now, self.batch)
            if not claimed:
                return False
            ids = [i for i in (store.run_of_timer(t) for t in claimed) if i is not None]
            runs, existing = await store.claim_runs(db, ids)
            # a timer whose run is gone or no longer waits is done with; a run another transaction holds
            # (the consumer moving it) comes next round; a run whose wait moved gets its timer moved
            done = [t for t in claimed if store.run_of_timer(t) not in existing]
            done += [store.timer_id(r.run_id) for r in runs if r.run_id and (r.status != "waiting" or r.due_at is None)]
            await store.TIMERS.cancel(db, done)
            await store.TIMERS.schedule(
                db,
                {
                    store.timer_id(r.run_id): r.due_at
                    for r in runs
                    if r.run_id and r.status == "waiting" and r.due_at is not None and r.due_at > now
                },
            )
            due = [run for run in runs if run.status == "waiting" and run.due_at is not None and run.due_at <= now]
            free = await store.try_lock_customers(db, [run.customer_id for run in due])
            due = [run for run in due if run.customer_id in free]  # a busy customer's runs come next round
            if not due:
                return len(claimed) == self.batch
            customers = sorted({run.customer_id for run in due})
            profiles = await store.profiles(db, customers)
            journeys = await self.decisions.journeys(db, customers, {"": due})
            for run in due:
                journeys.on_timer(run, profiles[run.customer_id])
            await store.write_plan(db, journeys.plan, topic=self.decisions.events_topic, now=now)
            sends = bool(journeys.plan.sends)
        if sends and self.wake is not None:
            self.wake()
        return len(claimed) == self.batch


@dataclass
class DeliveryRound:
    engine: AsyncEngine
    decisions: Decisions
    sender: Sender
    attempts: int = 5
    retry_base: timedelta = timedelta(seconds=30)
    batch: int = 200
    concurrency: int = 16
    on_sent: Callable[[], None] | None = None  # wake the outbox relay
    _semaphore: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(self.concurrency)

    async def __call__(self) -> bool:
        now = self.decisions.clock()
        async with transaction(self.engine) as db:
            rows = await db.fetch(
                """
                SELECT m.message_id, m.run_id, m.campaign_id, m.version, m.customer_id, m.step, m.variant,
                    m.attempts, m.due_at, m.reason, m.last_error, r.trigger, r.status AS run_status
                FROM messages m JOIN campaigns c USING (campaign_id) LEFT JOIN runs r USING (run_id)
                WHERE m.status = 'pending' AND m.due_at <= $1 AND c.status <> 'paused'
                ORDER BY m.due_at LIMIT $2 FOR UPDATE OF m SKIP LOCKED
                """,
                now,
                self.batch,
            )
            if not rows:
                return False
            claimed = len(rows)
            free = await store.try_lock_customers(db, [r["customer_id"] for r in rows])
            rows = [r for r in rows if r["customer_id"] in free]  # a busy customer's messages: next round
            if not rows:
                return claimed == self.batch
            definitions = await versions(db, {(r["campaign_id"], r["version"]) for r in rows})
            customers = sorted({r["customer_id"] for r in rows})
            profiles = await store.profiles(db, customers)
            suppressed = {
                r["customer_id"]: r["reason"]
                for r in await db.fetch(
                    "SELECT customer_id, reason FROM suppressions WHERE customer_id = ANY($1::text[])", customers
                )
            }
            shared = SerializedDb(db)  # sends run concurrently; one connection serves one query at a time
            # every job finishes before the transaction ends (a job left running would use the connection
            # after it went back to the pool); then the first error, if any, rolls the round back
            results = await asyncio.gather(
                *(self._one(row, definitions, profiles, suppressed, shared, now) for row in rows),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            outcomes = [result for result in results if not isinstance(result, BaseException)]
            await self._record(db, rows, outcomes, now)
        if any(outcome[0] in ("sent", "failed") for outcome in outcomes) and self.on_sent is not None:
            self.on_sent()
        return claimed == self.batch

    async def _one(
        self,
        row: Any,
        definitions: dict[tuple[str, int], Campaign],
        profiles: dict[str, Profile],
        suppressed: dict[str, str],
        db: Db,
        now: datetime,
    ) -> tuple[str, Any]:
        """(``sent`` | ``retry`` | ``failed`` | ``held`` | ``later``, the reason, error or new due time).

        The guardrails that depend on the moment are checked again at send time: a run that ended
        meanwhile (the order came), a customer who unsubscribed, a send that waited (a paused
        campaign, an outage) past the trigger age, or a retry that fell into quiet hours.
        """
        campaign = definitions[(row["campaign_id"], row["version"])]
        step = campaign.steps[row["step"]]
        assert isinstance(step, SendStep)
        profile = profiles[row["customer_id"]]
        guardrails = self.decisions.guardrails
        if row["run_status"] == "exited":
            return "held", "exited"
        if row["customer_id"] in suppressed and not campaign.transactional:
            return "held", "suppressed"
        if row["attempts"] == 0 and now - row["due_at"] > guardrails.max_trigger_age:
            return "held", "stale"
        quiet = guardrails.quiet_hours
        if campaign.quiet_hours and quiet is not None and not campaign.transactional:
            release = quiet.release(now, profile.timezone)
            if release != now:
                return "later", release
        if step.channel == "email" and not profile.email:
            # the address may still be on its way (identify applied after the stage change): try again later
            return ("held" if row["attempts"] + 1 >= self.attempts else "retry"), "no_address"
        trigger = row["trigger"]
        job = Job(
            message_id=row["message_id"],
            run_id=row["run_id"],
            campaign=campaign,
            version=row["version"],
            step=step,
            customer_id=row["customer_id"],
            profile=profile,
            variant=row["variant"],
            trigger=orjson.loads(trigger) if isinstance(trigger, str | bytes) else (trigger or {}),
            due_at=row["due_at"],
        )
        async with self._semaphore:
            try:
                await self.sender(job, db)
            except TransientFailure as exc:
                return ("failed" if row["attempts"] + 1 >= self.attempts else "retry"), str(exc)
            except RecipientRefused as exc:  # a hard bounce: this address gets no campaign mail any more
                return "bounced", str(exc)
            except (PermanentFailure, TemplateError) as exc:  # a template that cannot render will not next time
                return "failed", str(exc)
            except Exception as exc:  # unforeseen: this send is retried, the others of the round go on
                log.error("send raised an unexpected error", message_id=row["message_id"], error=type(exc).__name__)
                return ("failed" if row["attempts"] + 1 >= self.attempts else "retry"), type(exc).__name__
        return "sent", None

    async def _record(self, db: Db, rows: list[Any], outcomes: list[tuple[str, Any]], now: datetime) -> None:
        """Every message's new state in one statement, the counters, and the events through the outbox."""
        counts: Counter[tuple[str, str]] = Counter()
        events: list[tuple[Any, str, str | None]] = []
        updates: list[tuple[int, str, datetime, int, str | None, str | None, datetime | None]] = []
        bounced: list[str] = []
        for row, (outcome, detail) in zip(rows, outcomes, strict=True):
            SENDS.labels(outcome).inc()
            attempts = row["attempts"] + (0 if outcome in ("held", "later") else 1)
            status, due, reason, error, sent_at = "pending", row["due_at"], row["reason"], row["last_error"], None
            if outcome == "sent":
                SEND_DELAY.observe(max(0.0, (now - row["due_at"]).total_seconds()))
                status, error, sent_at = "sent", None, now
                counts[(row["campaign_id"], "sent")] += 1
                events.append((row, "sent", None))
            elif outcome == "later":
                due, reason = detail, "quiet_hours"
            elif outcome == "retry":
                due, error = now + self.retry_base * (2 ** (attempts - 1)), detail
                log.info("send will be retried", message_id=row["message_id"], attempts=attempts, error=detail)
            elif outcome in ("failed", "bounced"):
                status, error = "failed", detail
                if outcome == "bounced":
                    bounced.append(row["customer_id"])
                counts[(row["campaign_id"], "failed")] += 1
                events.append((row, "failed", detail))
                log.warning("send failed", message_id=row["message_id"], attempts=attempts, error=detail)
            else:
                status, reason = "held", detail
                counts[(row["campaign_id"], f"held:{detail}")] += 1
            updates.append((row["message_id"], status, due, attempts, reason, error, sent_at))
        await db.execute(
            """
            UPDATE messages SET status = u.status, due_at = u.due_at, attempts = u.attempts, reason = u.reason,
                last_error = u.last_error, sent_at = u.sent_at
            FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::int[], $5::text[], $6::text[],
                $7::timestamptz[]) AS u(message_id, status, due_at, attempts, reason, last_error, sent_at)
            WHERE messages.message_id = u.message_id
            """,
            *(list(column) for column in zip(*updates, strict=True)),
        )
        await suppress(db, dict.fromkeys(bounced, "hard_bounce"), dict.fromkeys(bounced, now))
        await store.add_counts(db, counts)
        await self._publish(db, events, now)

    async def _publish(self, db: Db, events: list[tuple[Any, str, str | None]], now: datetime) -> None:
        if not events:
            return
        sequences = await store.next_sequences(db, [row["customer_id"] for row, _, _ in events])
        definitions = await versions(db, {(row["campaign_id"], row["version"]) for row, _, _ in events})
        records = []
        for (row, outcome, error), sequence in zip(events, sequences, strict=True):
            step = definitions[(row["campaign_id"], row["version"])].steps[row["step"]]
            assert isinstance(step, SendStep)
            common: dict[str, Any] = {
                "customer_id": row["customer_id"],
                "campaign_id": row["campaign_id"],
                "version": row["version"],
                "run_id": row["run_id"] or 0,
                "message_id": row["message_id"],
                "step": step.name,
                "channel": step.channel,
            }
            if outcome == "sent":
                kind = EventType.CAMPAIGN_SENT
                data: Any = CampaignSent(**common, variant=row["variant"], sent_at=now)
            else:
                kind = EventType.CAMPAIGN_FAILED
                data = CampaignFailed(**common, attempts=row["attempts"] + 1, error=error or "", failed_at=now)
            records.append(
                store.campaign_event(
                    kind,
                    f"{outcome}/{row['message_id']}",
                    row["customer_id"],
                    sequence,
                    now,
                    data,
                    self.decisions.events_topic,
                )
            )
        await store.OUTBOX.add(db, records)
