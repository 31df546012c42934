"""The consumer toolkit on the real broker and database: a consumer of stage changes, outbox, timers, dedup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.batch_consumer import cloudevent_handler
from clm_shared.cloudevents import CloudEventDeserializer, Envelope, decode
from clm_shared.kafka.consumer import ERROR_HEADER, SOURCE_TOPIC_HEADER, Consumed
from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.outbox import Outbox, OutboxRelay
from clm_shared.runtime import ConsumerRuntime
from clm_shared.service import ServiceContext
from clm_shared.settings import Settings
from clm_shared.timers import Timers
from clm_shared.topics import Topics
from clm_shared.transactions import Db, exclusive, transaction
from tests.utils.clock import FakeClock
from tests.utils.kafka import read_records
from tests.utils.toolkit_consumer import applied_rows, apply_stage_changes, stage_change, toolkit_schema
from tests.waiting import wait_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str, namespace: str) -> AsyncIterator[AsyncEngine]:
    async with toolkit_schema(database_url, namespace + "toolkit") as engine:
        yield engine


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


def gaps_counted() -> float:
    return REGISTRY.get_sample_value("clm_consumer_sequence_gaps_total", {"table": "last_sequences"}) or 0.0


async def test_a_consumer_of_stage_changes_dead_letters_malformed_events_drops_duplicates_and_counts_gaps(
    settings: Settings, topics: Topics, engine: AsyncEngine
) -> None:
    publisher = Publisher(settings.kafka_bootstrap, client_id="test")
    ctx = ServiceContext("metrics", settings, engine, topics)
    ctx.topics_ready.set()
    runtime = ConsumerRuntime(ctx, publisher, client_id="test")
    handler = cloudevent_handler(engine, apply_stage_changes, clock=FakeClock(T0), dedup_window=timedelta(days=1))
    runtime.consume(
        group="toolkit",
        topics=[topics.stage_changes],
        deserializer=CloudEventDeserializer(),
        handler=handler,
        dlq_topic=topics.stage_changes_dlq,
    )
    ready = ctx.readiness["consumer:toolkit"]
    assert not await ready()  # /readyz is false until the loop has its partitions
    gaps_before = gaps_counted()
    malformed = stage_change("c1", 2).replace(b'"sequence":2', b'"sequence":"two"')
    values = [
        stage_change("c1", 1),
        malformed,
        b"{not json",
        stage_change("c1", 1),  # delivered twice: applied once
        stage_change("c2", 1),
        stage_change("c2", 3),  # 2 never arrived: a gap, counted, not a crash
        stage_change("c1", 2),
    ]
    try:
        await wait_for(ready, what="partitions assigned")
        await publisher.publish_many([OutgoingRecord(topics.stage_changes, v, key=decode_key(v)) for v in values])
        await wait_for(lambda: _rows(engine, 4), what="the four distinct good events applied")
        dead = await read_records(settings.kafka_bootstrap, topics.stage_changes_dlq, expected=2)
    finally:
        await runtime.stop()
    assert sorted((c, s) for _, c, s in await applied_rows(engine)) == [("c1", 1), ("c1", 2), ("c2", 1), ("c2", 3)]
    assert sorted(r.value for r in dead) == sorted([malformed, b"{not json"])
    assert all(dict(r.headers)[ERROR_HEADER].startswith(b"decode: ") for r in dead)
    assert {dict(r.headers)[SOURCE_TOPIC_HEADER] for r in dead} == {topics.stage_changes.encode()}
    assert gaps_counted() - gaps_before == 1
    async with engine.connect() as conn:
        last = {r[0]: r[1] for r in await conn.execute(text("SELECT subject, sequence FROM last_sequences"))}
    assert last == {"c1": 2, "c2": 3}
    assert await count(engine, "processed_messages") == 4


def decode_key(value: bytes) -> bytes | None:
    try:
        return decode(value).subject.encode()
    except ValueError:
        return b"c1"


async def _rows(engine: AsyncEngine, expected: int) -> bool:
    return await count(engine, "applied") >= expected


async def test_the_dedup_table_stays_bounded_under_a_sustained_input(engine: AsyncEngine) -> None:
    clock = FakeClock(T0)
    window = timedelta(seconds=10)
    handler = cloudevent_handler(engine, apply_stage_changes, clock=clock, dedup_window=window)
    per_second = 300
    sizes = []
    for second in range(40):  # well past the window: 12,000 ids in, at most ~3,300 kept
        batch = [_consumed(f"s{second}-{i}", second) for i in range(per_second)]
        await handler(batch)
        clock.now += timedelta(seconds=1)
        sizes.append(await count(engine, "processed_messages"))
    assert max(sizes) <= (window.total_seconds() + 1) * per_second
    assert sizes[-1] == sizes[-10]  # level, not growing
    assert await count(engine, "applied") == 40 * per_second


async def test_only_the_records_the_apply_names_are_remembered_and_only_they_are_never_applied_twice(
    engine: AsyncEngine,
) -> None:
    async def apply_odd(db: Db, batch: Sequence[Consumed[Envelope]]) -> list[Envelope]:
        await apply_stage_changes(db, batch)
        return [item.value for item in batch if item.value.sequence % 2]

    handler = cloudevent_handler(engine, apply_odd, clock=FakeClock(T0), dedup_window=timedelta(days=1))
    handler.remember_returned = True
    batch = [_consumed("c", n) for n in range(6)]  # sequences 1..6
    await handler(batch)
    await handler(batch)  # a replay: the even ones again, the odd ones not
    assert await count(engine, "processed_messages") == 3
    applied = sorted(s for _, _, s in await applied_rows(engine))
    assert applied == [1, 2, 2, 3, 4, 4, 5, 6, 6]


async def test_a_batch_that_repeats_some_applied_ids_applies_only_the_new_ones(engine: AsyncEngine) -> None:
    handler = cloudevent_handler(engine, apply_stage_changes, clock=FakeClock(T0), dedup_window=timedelta(days=1))
    first = [_consumed("c", n) for n in range(3)]  # sequences 1..3, claimed without a lookup
    await handler(first)
    again = [*first[1:], first[1], _consumed("c", 3), _consumed("c", 4)]  # 2, 3, 2 again, then 4 and 5
    await handler(again)
    assert sorted(s for _, _, s in await applied_rows(engine)) == [1, 2, 3, 4, 5]
    assert await count(engine, "processed_messages") == 5


def _consumed(customer: str, sequence: int) -> Consumed[Envelope]:
    value = stage_change(customer, sequence + 1)
    return Consumed("t", 0, sequence, None, decode(value), 0)


class GatedPublisher:
    """Publishes to the real broker, remembering how many relays published at once."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.in_flight = 0
        self.most_at_once = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def publish(self, record: OutgoingRecord) -> None:
        await self.publish_many([record])

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        self.entered.set()
        try:
            await self.gate.wait()
            await self.inner.publish_many(records)
        finally:
            self.in_flight -= 1


async def test_of_two_relays_one_publishes_at_a_time_and_order_is_kept(
    settings: Settings, topics: Topics, engine: AsyncEngine
) -> None:
    inner = Publisher(settings.kafka_bootstrap, client_id="test")
    publisher = GatedPublisher(inner)
    one = OutboxRelay(engine, publisher, batch=50)
    two = OutboxRelay(engine, publisher, batch=50)
    records = [
        OutgoingRecord(topics.campaign_events, f"{key}:{n}".encode(), key=key.encode(), headers=(("h", b"v"),))
        for n in range(100)
        for key in ("a", "b", "c")
    ]
    async with transaction(engine) as db:
        await Outbox().add(db, records)

    # While one relay holds the lock (publishing), the other publishes nothing.
    publisher.gate.clear()
    first = asyncio.create_task(one.relay_once())
    await publisher.entered.wait()
    assert await two.relay_once() == 0
    publisher.gate.set()
    assert await first == 50

    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop)) for relay in (one, two)]
    try:
        await wait_for(lambda: _empty(engine), what="the outbox drained")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await inner.stop()
    assert publisher.most_at_once == 1
    published = await read_records(settings.kafka_bootstrap, topics.campaign_events, expected=len(records))
    assert len(published) == len(records)
    for key in ("a", "b", "c"):
        assert [r.value for r in published if r.key == key.encode()] == [f"{key}:{n}".encode() for n in range(100)]
    assert all(dict(r.headers)["h"] == b"v" for r in published)


class CountingRelay(OutboxRelay):
    rounds: int = 0

    async def relay_once(self) -> int:
        relayed = await super().relay_once()
        self.rounds += 1
        return relayed


async def test_a_relay_kept_out_by_another_looks_again_soon_for_the_rows_that_one_did_not_take(
    settings: Settings, topics: Topics, engine: AsyncEngine
) -> None:
    """Two engine processes share one outbox: rows committed while the other relay publishes are not
    in its round, so waiting the whole idle time would add it to their latency."""
    inner = Publisher(settings.kafka_bootstrap, client_id="test")
    publisher = GatedPublisher(inner)
    holder = OutboxRelay(engine, publisher)
    waiting = CountingRelay(engine, publisher, idle_s=60)
    async with transaction(engine) as db:
        await Outbox().add(db, [OutgoingRecord(topics.campaign_events, b"first", key=b"k")])
    publisher.gate.clear()
    held = asyncio.create_task(holder.relay_once())
    await publisher.entered.wait()
    stop = asyncio.Event()
    task = asyncio.create_task(waiting.run(stop))
    try:
        await wait_for(lambda: waiting.rounds >= 2, timeout_s=10, what="a second round while the lock is held")
        async with transaction(engine) as db:
            await Outbox().add(db, [OutgoingRecord(topics.campaign_events, b"second", key=b"k")])
        publisher.gate.set()
        assert await held == 1
        await wait_for(lambda: _empty(engine), timeout_s=10, what="the later row published by the waiting relay")
    finally:
        publisher.gate.set()
        stop.set()
        await task
        await inner.stop()
    published = await read_records(settings.kafka_bootstrap, topics.campaign_events, expected=2)
    assert [r.value for r in published] == [b"first", b"second"]


async def _empty(engine: AsyncEngine) -> bool:
    return await count(engine, "outbox") == 0


async def test_a_due_timer_is_claimed_by_one_of_two_claimers_only(engine: AsyncEngine) -> None:
    timers = Timers()
    async with transaction(engine) as db:
        await timers.schedule(db, {f"t{i}": T0 + timedelta(minutes=i) for i in range(10)})
        await timers.schedule(db, {"later": T0 + timedelta(days=1)})

    claimed_first = asyncio.Event()
    release = asyncio.Event()

    async def first_claimer() -> list[str]:
        async with transaction(engine) as db:
            mine = await timers.claim_due(db, T0 + timedelta(hours=1), 6)
            claimed_first.set()
            await release.wait()  # hold the claim while the other looks
            await timers.cancel(db, mine)
            return mine

    async def second_claimer() -> list[str]:
        await claimed_first.wait()
        async with transaction(engine) as db:
            mine = await timers.claim_due(db, T0 + timedelta(hours=1), 100, try_key_locks=True)
            await timers.cancel(db, mine)
        release.set()
        return mine

    first, second = await asyncio.gather(first_claimer(), second_claimer())
    assert first == [f"t{i}" for i in range(6)]  # oldest first
    assert second == [f"t{i}" for i in range(6, 10)]  # the rest, none of the first's
    async with transaction(engine) as db:
        assert await timers.claim_due(db, T0 + timedelta(hours=1), 100) == []
        assert await timers.claim_due(db, T0 + timedelta(days=2), 100) == ["later"]


# The session holding ``exclusive(engine, "refit")``'s lock (a bigint key: its high and low halves).
REFIT_HOLDER = (
    "WITH k AS (SELECT hashtextextended(current_schema() || ':refit', 0) AS key)"
    " SELECT a.pid, a.state FROM pg_locks l JOIN pg_stat_activity a USING (pid), k"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.database = a.datid"
    " AND l.classid::bigint = (k.key >> 32) & 4294967295 AND l.objid::bigint = k.key & 4294967295"
)


async def test_exclusive_work_has_one_holder_until_it_ends_or_its_session_dies(engine: AsyncEngine) -> None:
    async with exclusive(engine, "refit") as first:
        async with exclusive(engine, "refit") as second, exclusive(engine, "another job") as other:
            assert (first, second, other) == (True, False, True)
        async with transaction(engine) as db:  # the lock is a session's: no transaction is held open
            assert [row["state"] for row in await db.fetch(REFIT_HOLDER)] == ["idle"]
    async with exclusive(engine, "refit") as again:
        assert again

    async with exclusive(engine, "refit") as held:
        assert held
        async with transaction(engine) as db:  # the holder's session dies: its lock goes with it
            (holder,) = await db.fetch(REFIT_HOLDER)
            assert await db.fetchval("SELECT pg_terminate_backend($1)", holder["pid"])

    async def free_again() -> bool:
        async with exclusive(engine, "refit") as after:
            return after

    await wait_for(free_again, timeout_s=10, what="the dead session's lock released")
