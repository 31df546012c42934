"""Loading what decisions need and writing a ``Plan``, in the caller's transaction, in bulk.

Run rows of the customers in a batch are locked (``FOR UPDATE``) before decisions are taken, and
the timer loop claims runs with ``SKIP LOCKED``: a run is moved by one transaction at a time.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from campaigns.definitions import Campaign
from campaigns.journeys import CapLedger, LiveCampaign, Plan, Profile, Run, reacts_to
from campaigns.registry import all_versions, list_all, version_count, versions
from clm_shared.cloudevents import to_record
from clm_shared.kafka.producer import OutgoingRecord
from clm_shared.outbox import Outbox
from clm_shared.schemas.lifecycle import CampaignConverted, EventType
from clm_shared.timers import Timers
from clm_shared.transactions import Db

SERVICE = "campaigns"
_EVENT_IDS = uuid.UUID("0b6f7f0e-5a43-4c5e-9a55-2c1f8d3e6a01")
TIMERS = Timers()
OUTBOX = Outbox()

_RUN_COLUMNS = (
    "run_id, campaign_id, version, customer_id, trigger_id, trigger, status, step, variant, holdout,"
    " entered_at, step_since, due_at, waiting_for, converted_at, entry_converted_at"
)


def timer_id(run_id: int) -> str:
    return f"run:{run_id}"


def run_of_timer(timer: str) -> int | None:
    prefix, _, number = timer.partition(":")
    return int(number) if prefix == "run" and number.isdigit() else None


def event_id(kind: str, key: str) -> str:
    """Deterministic, so the outbox publishing a row twice publishes the same id twice."""
    return str(uuid.uuid5(_EVENT_IDS, f"{kind}/{key}"))


def _json(value: Any) -> Any:
    """A jsonb value: the engine's connections decode it already; text only from a bare connection."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _run(row: Any) -> Run:
    return Run(
        run_id=row["run_id"],
        campaign_id=row["campaign_id"],
        version=row["version"],
        customer_id=row["customer_id"],
        trigger_id=row["trigger_id"],
        trigger=_json(row["trigger"]),
        status=row["status"],
        step=row["step"],
        variant=row["variant"],
        holdout=row["holdout"],
        entered_at=row["entered_at"],
        step_since=row["step_since"],
        due_at=row["due_at"],
        waiting_for=row["waiting_for"],
        converted_at=row["converted_at"],
        entry_converted_at=row["entry_converted_at"],
    )


# -- per-customer locks -----------------------------------------------------------------------------
# Every transaction that decides for a customer (both consumers, the timer and delivery rounds) holds
# that customer's advisory lock: the frequency cap and a run's state are read and written by one at a
# time. Consumers wait for the locks in sorted order; the rounds only try them, so none waits on
# another crosswise. The prefix keeps them apart from the stage engine's locks on the same ids.
_LOCK_PREFIX = "clm.campaigns/"


async def lock_customers(db: Db, customer_ids: Iterable[str]) -> None:
    ordered = sorted(set(customer_ids))
    if ordered:
        await db.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($2 || c, 0)) FROM unnest($1::text[]) AS c",
            ordered,
            _LOCK_PREFIX,
        )


async def try_lock_customers(db: Db, customer_ids: Iterable[str]) -> set[str]:
    """The customers whose lock this transaction holds now; the others are busy (next round)."""
    ordered = sorted(set(customer_ids))
    if not ordered:
        return set()
    rows = await db.fetch(
        "SELECT c FROM unnest($1::text[]) AS c WHERE pg_try_advisory_xact_lock(hashtextextended($2 || c, 0))",
        ordered,
        _LOCK_PREFIX,
    )
    return {row[0] for row in rows}


# -- loading --------------------------------------------------------------------------------------
@dataclass
class WatchedEvents:
    """The event names any stored campaign version reacts to (``reacts_to``), kept while no version is added.

    A version another instance adds is seen by the next batch. Every version counts, archived and old
    ones too: a run of an old version may still wait for its event.
    """

    _versions: int = -1
    _names: frozenset[str] = frozenset()

    async def names(self, db: Db) -> frozenset[str]:
        count = await version_count(db)
        if count != self._versions:
            # Read after the count: a version added in between makes the set larger, never smaller.
            self._names = frozenset(name for campaign in await all_versions(db) for name in reacts_to(campaign))
            self._versions = count
        return self._names


async def live_campaigns(db: Db) -> dict[str, LiveCampaign]:
    return {r.campaign.id: LiveCampaign(r.campaign, r.version, r.status) for r in await list_all(db)}


async def run_versions(db: Db, runs: Iterable[Run]) -> dict[tuple[str, int], Campaign]:
    return await versions(db, {(run.campaign_id, run.version) for run in runs})


async def profiles(db: Db, customer_ids: Iterable[str]) -> dict[str, Profile]:
    """Stored profiles, and an empty one for each customer not seen before."""
    wanted = sorted(set(customer_ids))
    rows = await db.fetch(
        "SELECT customer_id, email, timezone, traits, stage, health FROM profiles WHERE customer_id = ANY($1::text[])",
        wanted,
    )
    found = {
        r["customer_id"]: Profile(
            r["customer_id"], r["email"], r["timezone"], _json(r["traits"]), r["stage"], r["health"]
        )
        for r in rows
    }
    return {cid: found.get(cid) or Profile(cid) for cid in wanted}


async def save_traits(db: Db, changed: Iterable[Profile], now: datetime) -> None:
    """Address, timezone and traits (the touchpoint consumer's part of a profile)."""
    rows = sorted(changed, key=lambda p: p.customer_id)
    if rows:
        await db.execute(
            """
            INSERT INTO profiles (customer_id, email, timezone, traits, updated_at)
            SELECT c, e, z, t::jsonb, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(c, e, z, t)
            ON CONFLICT (customer_id) DO UPDATE SET email = excluded.email, timezone = excluded.timezone,
                traits = excluded.traits, updated_at = excluded.updated_at
            """,
            [p.customer_id for p in rows],
            [p.email for p in rows],
            [p.timezone for p in rows],
            [orjson.dumps(p.traits).decode() for p in rows],
            now,
        )


async def save_stages(db: Db, changed: Iterable[Profile], now: datetime) -> None:
    """Stage and health (the lifecycle consumer's part): the two consumers never overwrite each other."""
    rows = sorted(changed, key=lambda p: p.customer_id)
    if rows:
        await db.execute(
            """
            INSERT INTO profiles (customer_id, stage, health, updated_at)
            SELECT c, s, h, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS u(c, s, h)
            ON CONFLICT (customer_id) DO UPDATE SET stage = excluded.stage, health = excluded.health,
                updated_at = excluded.updated_at
            """,
            [p.customer_id for p in rows],
            [p.stage for p in rows],
            [p.health for p in rows],
            now,
        )


async def started_triggers(db: Db, customer_ids: Sequence[str]) -> dict[str, set[tuple[str, str]]]:
    """(campaign, trigger) pairs that started a run or were held back at entry, per customer."""
    rows = await db.fetch(
        "SELECT customer_id, campaign_id, trigger_id FROM runs WHERE customer_id = ANY($1::text[])"
        " UNION SELECT customer_id, campaign_id, trigger_id FROM messages WHERE customer_id = ANY($1::text[])"
        " AND step = -1",
        list(customer_ids),
    )
    started: dict[str, set[tuple[str, str]]] = {cid: set() for cid in customer_ids}
    for row in rows:
        started[row["customer_id"]].add((row["campaign_id"], row["trigger_id"]))
    return started


async def runs_in_progress(db: Db, customer_ids: Sequence[str]) -> dict[str, list[Run]]:
    """Active and waiting runs, locked until the transaction ends."""
    rows = await db.fetch(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE customer_id = ANY($1::text[]) AND status IN ('active', 'waiting')"
        " ORDER BY run_id FOR UPDATE",
        list(customer_ids),
    )
    found: dict[str, list[Run]] = {cid: [] for cid in customer_ids}
    for row in rows:
        found[row["customer_id"]].append(_run(row))
    return found


async def claim_runs(db: Db, run_ids: Sequence[int]) -> tuple[list[Run], set[int]]:
    """The runs not held by another transaction (locked now), and the ids of all that still exist."""
    rows = await db.fetch(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ANY($1::bigint[]) FOR UPDATE SKIP LOCKED", list(run_ids)
    )
    existing = {r[0] for r in await db.fetch("SELECT run_id FROM runs WHERE run_id = ANY($1::bigint[])", list(run_ids))}
    return [_run(row) for row in rows], existing


async def attribution_candidates(
    db: Db, customer_ids: Sequence[str], since: datetime, known: dict[int, Run]
) -> dict[str, list[tuple[Run, datetime | None]]]:
    """Runs not converted both ways that entered, or had a send, after ``since``, with their last send time."""
    rows = await db.fetch(
        f"""
        WITH sent AS (
            SELECT run_id, max(sent_at) AS last_sent FROM messages
            WHERE customer_id = ANY($1::text[]) AND status = 'sent' AND sent_at >= $2 AND run_id IS NOT NULL
            GROUP BY run_id
        )
        SELECT {_RUN_COLUMNS}, sent.last_sent FROM runs LEFT JOIN sent USING (run_id)
        WHERE customer_id = ANY($1::text[])
          AND ((converted_at IS NULL AND sent.last_sent IS NOT NULL)
            OR (entry_converted_at IS NULL AND entered_at >= $2))
        ORDER BY run_id FOR UPDATE OF runs
        """,
        list(customer_ids),
        since,
    )
    found: dict[str, list[tuple[Run, datetime | None]]] = {cid: [] for cid in customer_ids}
    for row in rows:
        run = known.get(row["run_id"]) or _run(row)  # the same object as in runs_in_progress, if there
        found[row["customer_id"]].append((run, row["last_sent"]))
    return found


async def cap_ledger(db: Db, customer_ids: Sequence[str], cap: int, window: Any, now: datetime) -> CapLedger:
    rows = await db.fetch(
        "SELECT customer_id, due_at FROM messages WHERE customer_id = ANY($1::text[]) AND NOT transactional"
        " AND status IN ('pending', 'sent') AND step >= 0 AND due_at > $2",
        list(customer_ids),
        now - window,
    )
    known: dict[str, list[datetime]] = {}
    for row in rows:
        known.setdefault(row["customer_id"], []).append(row["due_at"])
    return CapLedger(cap, window, known)


async def identities(db: Db, alias_ids: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(alias_ids))
    if not wanted:
        return {}
    rows = await db.fetch("SELECT alias_id, customer_id FROM identities WHERE alias_id = ANY($1::text[])", wanted)
    return {r["alias_id"]: r["customer_id"] for r in rows}


async def link_identities(db: Db, links: dict[str, str]) -> None:
    if links:
        await db.execute(
            "INSERT INTO identities (alias_id, customer_id) SELECT * FROM unnest($1::text[], $2::text[])"
            " ON CONFLICT (alias_id) DO UPDATE SET customer_id = excluded.customer_id",
            list(links),
            list(links.values()),
        )


# -- writing --------------------------------------------------------------------------------------
async def write_plan(db: Db, plan: Plan, *, topic: str, now: datetime) -> None:
    """Runs, their timers, messages, counters and the conversion events, in the caller's transaction."""
    kept = await _insert_runs(db, plan.new_runs)
    dropped = {id(run) for run in plan.new_runs if id(run) not in kept}  # a concurrent duplicate trigger
    await _update_runs(db, plan.changed_runs)
    due: dict[str, datetime] = {}
    gone: list[str] = []
    for run in plan.timers.values():
        if run.run_id is None:
            continue
        if run.status == "waiting" and run.due_at is not None:
            due[timer_id(run.run_id)] = run.due_at
        else:
            gone.append(timer_id(run.run_id))
    await TIMERS.schedule(db, due)
    await TIMERS.cancel(db, gone)
    sends = [s for s in plan.sends if s.run is None or id(s.run) not in dropped]
    await _insert_messages(db, sends)
    counts = Counter(plan.counts)
    for run in plan.new_runs:
        if id(run) in dropped:
            counts[(run.campaign_id, "entered")] -= 1
    await add_counts(db, counts)
    records = []
    conversions = [c for c in plan.conversions if c[0].run_id is not None]
    sequences = await next_sequences(db, [run.customer_id for run, _, _ in conversions])
    for (run, at, order), sequence in zip(conversions, sequences, strict=True):
        assert run.run_id is not None
        data = CampaignConverted(
            customer_id=run.customer_id,
            campaign_id=run.campaign_id,
            version=run.version,
            run_id=run.run_id,
            order_message_id=str(order.get("message_id", "")),
            revenue=float(order.get("revenue", 0.0)),
            event_time=at,
        )
        records.append(
            campaign_event(
                EventType.CAMPAIGN_CONVERTED, f"converted/{run.run_id}", run.customer_id, sequence, at, data, topic
            )
        )
    await OUTBOX.add(db, records)


def campaign_event(
    kind: EventType, key: str, customer_id: str, sequence: int, at: datetime, data: BaseModel, topic: str
) -> OutgoingRecord:
    return to_record(
        topic,
        event_id=event_id(str(kind), key),
        event_type=kind,
        service=SERVICE,
        customer_id=customer_id,
        sequence=sequence,
        time=at,
        data=data,
    )


async def next_sequences(db: Db, customer_ids: Sequence[str]) -> list[int]:
    """The next per-customer sequence number for each event, in order (several per customer allowed)."""
    if not customer_ids:
        return []
    wanted = Counter(sorted(customer_ids))  # rows locked in one order by every writer
    rows = await db.fetch(
        "INSERT INTO profiles (customer_id, event_sequence) SELECT * FROM unnest($1::text[], $2::bigint[])"
        " ON CONFLICT (customer_id) DO UPDATE SET event_sequence = profiles.event_sequence + excluded.event_sequence"
        " RETURNING customer_id, event_sequence",
        list(wanted),
        list(wanted.values()),
    )
    next_of = {r["customer_id"]: r["event_sequence"] - wanted[r["customer_id"]] + 1 for r in rows}
    result = []
    for cid in customer_ids:
        result.append(next_of[cid])
        next_of[cid] += 1
    return result


async def add_counts(db: Db, counts: Counter[tuple[str, str]]) -> None:
    items = sorted((key, n) for key, n in counts.items() if n)  # one row order for every writer: no deadlock
    if items:
        await db.execute(
            "INSERT INTO campaign_counts (campaign_id, counter, count)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])"
            " ON CONFLICT (campaign_id, counter) DO UPDATE SET count = campaign_counts.count + excluded.count",
            [k[0] for k, _ in items],
            [k[1] for k, _ in items],
            [n for _, n in items],
        )


async def _insert_runs(db: Db, runs: list[Run]) -> set[int]:
    """Insert new runs, set their ids; a run whose trigger another transaction recorded meanwhile is left out."""
    if not runs:
        return set()
    rows = await db.fetch(
        """
        INSERT INTO runs (campaign_id, version, customer_id, trigger_id, trigger, status, step, variant, holdout,
            entered_at, step_since, due_at, waiting_for)
        SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::int[],
            $8::text[], $9::bool[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[], $13::text[])
        ON CONFLICT ON CONSTRAINT uq_runs_trigger DO NOTHING
        RETURNING run_id, campaign_id, customer_id, trigger_id
        """,
        [r.campaign_id for r in runs],
        [r.version for r in runs],
        [r.customer_id for r in runs],
        [r.trigger_id for r in runs],
        [orjson.dumps(r.trigger).decode() for r in runs],
        [r.status for r in runs],
        [r.step for r in runs],
        [r.variant for r in runs],
        [r.holdout for r in runs],
        [r.entered_at for r in runs],
        [r.step_since for r in runs],
        [r.due_at for r in runs],
        [r.waiting_for for r in runs],
    )
    by_key = {(r.campaign_id, r.customer_id, r.trigger_id): r for r in runs}
    kept: set[int] = set()
    for row in rows:
        run = by_key[(row["campaign_id"], row["customer_id"], row["trigger_id"])]
        run.run_id = row["run_id"]
        kept.add(id(run))
    return kept


async def _update_runs(db: Db, runs: list[Run]) -> None:
    if not runs:
        return
    await db.execute(
        """
        UPDATE runs SET status = u.status, step = u.step, variant = u.variant, step_since = u.step_since,
            due_at = u.due_at, waiting_for = u.waiting_for, converted_at = u.converted_at,
            entry_converted_at = u.entry_converted_at
        FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::timestamptz[], $6::timestamptz[],
            $7::text[], $8::timestamptz[], $9::timestamptz[]) AS u(run_id, status, step, variant, step_since, due_at,
            waiting_for, converted_at, entry_converted_at)
        WHERE runs.run_id = u.run_id
        """,
        [r.run_id for r in runs],
        [r.status for r in runs],
        [r.step for r in runs],
        [r.variant for r in runs],
        [r.step_since for r in runs],
        [r.due_at for r in runs],
        [r.waiting_for for r in runs],
        [r.converted_at for r in runs],
        [r.entry_converted_at for r in runs],
    )


async def _insert_messages(db: Db, sends: list[Any]) -> None:
    if not sends:
        return
    await db.execute(
        """
        INSERT INTO messages (run_id, campaign_id, version, customer_id, trigger_id, step, step_name, channel,
            variant, transactional, status, reason, due_at, created_at)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::text[], $6::int[], $7::text[],
            $8::text[], $9::text[], $10::bool[], $11::text[], $12::text[], $13::timestamptz[], $14::timestamptz[])
        ON CONFLICT ON CONSTRAINT uq_messages_send DO NOTHING
        """,
        [s.run.run_id if s.run is not None else None for s in sends],
        [s.campaign_id for s in sends],
        [s.version for s in sends],
        [s.customer_id for s in sends],
        [s.trigger_id for s in sends],
        [s.step for s in sends],
        [s.step_name for s in sends],
        [s.channel for s in sends],
        [s.variant for s in sends],
        [s.transactional for s in sends],
        [s.status for s in sends],
        [s.reason for s in sends],
        [s.due_at for s in sends],
        [s.created_at for s in sends],
    )


async def erase(db: Db, customer_ids: Sequence[str]) -> None:
    """GDPR: the customers' runs, messages, address, traits, purchases and links go; counters stay."""
    if not customer_ids:
        return
    # the customer's anonymous ids too: what was kept under them before they were tied to the customer
    aliases = await db.fetch("SELECT alias_id FROM identities WHERE customer_id = ANY($1::text[])", list(customer_ids))
    ids = sorted({*customer_ids, *(r["alias_id"] for r in aliases)})
    run_ids = await db.fetch("SELECT run_id FROM runs WHERE customer_id = ANY($1::text[])", ids)
    await TIMERS.cancel(db, [timer_id(r["run_id"]) for r in run_ids])
    for table in ("messages", "runs", "profiles", "purchases", "suppressions"):
        await db.execute(f"DELETE FROM {table} WHERE customer_id = ANY($1::text[])", ids)
    await db.execute("DELETE FROM last_sequences WHERE subject = ANY($1::text[])", ids)
    await db.execute("DELETE FROM identities WHERE customer_id = ANY($1::text[]) OR alias_id = ANY($1::text[])", ids)
