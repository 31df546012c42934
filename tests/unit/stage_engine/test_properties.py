"""Properties of the engine over any event sequence (hypothesis)."""

from __future__ import annotations

import zlib
from datetime import timedelta
from typing import Any

import msgspec
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from clm_shared.schemas.lifecycle import Stage
from clm_shared.schemas.touchpoint import Touchpoint
from stage_engine.batch import BatchState, apply_batch
from stage_engine.lifecycle import StageMove
from stage_engine.memory import InMemoryEngine
from stage_engine.rules import DEFAULT_RULES_FILE, load_rules, parse_rules
from tests.utils.factories import T0, touchpoint

RULES = load_rules()
# The preview benchmark's new rules: conversion wants two paid orders.
TWO_PAID_ORDERS = parse_rules(
    yaml.safe_load(
        DEFAULT_RULES_FILE.read_text().replace(
            "{name: first_paid_order, signal: paid_order}", "{name: first_paid_order, signal: paid_order, count: 2}"
        )
    )
)
CUSTOMERS = ["user-1", "user-2", "anon-1", "anon-2"]
EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("Ad Impression", {}),
    ("Product Viewed", {}),
    ("Email Opened", {}),
    ("Signed Up", {}),
    ("Order Completed", {"revenue": 120}),
    ("Order Completed", {"revenue": 0}),
    ("Subscription Started", {}),
    ("Subscription Renewed", {}),
    ("Subscription Cancelled", {}),
    ("Loyalty Program Joined", {}),
    ("Review Submitted", {"rating": 5}),
    ("NPS Survey Answered", {"score": 10}),
    ("Referral Sent", {}),
]


@st.composite
def touchpoints(draw: st.DrawFn, with_identity: bool = False) -> Touchpoint:
    day = draw(st.integers(0, 500))
    customer = draw(st.sampled_from(CUSTOMERS))
    if with_identity and draw(st.integers(0, 9)) == 0:
        return touchpoint(
            None,
            customer=draw(st.sampled_from(["user-1", "user-2"])),
            call_type="alias",
            previous_id=draw(st.sampled_from(["anon-1", "anon-2"])),
            at=T0 + timedelta(days=day),
        )
    event, props = draw(st.sampled_from(EVENTS))
    return touchpoint(event, customer=customer, at=T0 + timedelta(days=day), **props)


sequences = st.lists(touchpoints(), max_size=40)
sequences_with_identity = st.lists(touchpoints(with_identity=True), max_size=40)


def run(events: list[Touchpoint], batches: list[int] | None = None) -> InMemoryEngine:
    engine = InMemoryEngine(RULES)
    start = 0
    for size in batches or [len(events)]:
        engine.process(events[start : start + size])
        start += size
    engine.process(events[start:])
    return engine


def stages_and_counts(engine: InMemoryEngine) -> dict[str, tuple[Stage | None, dict[str, int], dict[str, float]]]:
    return {cid: (c.stage, c.signal_counts, c.signal_revenue) for cid, c in engine.customers.items()}


@given(sequences_with_identity)
def test_a_stage_never_moves_back(events: list[Touchpoint]) -> None:
    engine = run(events)
    last: dict[str, int] = {}
    for item in engine.published:
        if isinstance(item.change, StageMove):
            rank = item.change.to_stage.rank
            assert rank > last.get(item.customer_id, -1)
            assert rank > (item.change.from_stage.rank if item.change.from_stage else -1)
            last[item.customer_id] = rank


@given(sequences_with_identity, st.data())
def test_duplicate_deliveries_and_batch_boundaries_change_nothing(
    events: list[Touchpoint], data: st.DataObject
) -> None:
    reference = run(events)
    duplicated = list(events)
    for index in data.draw(st.lists(st.integers(0, max(len(events) - 1, 0)), max_size=10)) if events else []:
        # A redelivery comes after the original (same partition, later offset).
        original = duplicated.index(events[index])
        duplicated.insert(data.draw(st.integers(original + 1, len(duplicated))), events[index])
    batches = data.draw(st.lists(st.integers(1, 7), max_size=12))
    other = run(duplicated, batches)
    assert other.customers == reference.customers
    assert other.identities == reference.identities
    assert [(x.customer_id, x.sequence, x.event_id, x.change) for x in other.published] == [
        (x.customer_id, x.sequence, x.event_id, x.change) for x in reference.published
    ]


@settings(max_examples=200)
@given(sequences, st.randoms(use_true_random=False))
def test_the_final_stages_do_not_depend_on_arrival_order(events: list[Touchpoint], rnd: Any) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert stages_and_counts(run(shuffled)) == stages_and_counts(run(events))


@given(sequences_with_identity, st.data())
def test_two_instances_splitting_the_partitions_end_where_one_does(
    events: list[Touchpoint], data: st.DataObject
) -> None:
    # Each instance owns the partitions of some customer keys and sees them in order; the shared
    # store (here: one engine's dicts) is what the two instances read and write.
    owner = {key: zlib.crc32(key.encode()) % 2 for key in {tp.customer_key for tp in events}}
    streams = [[tp for tp in events if owner[tp.customer_key] == i] for i in (0, 1)]
    shared = InMemoryEngine(RULES)
    positions = [0, 0]
    while positions[0] < len(streams[0]) or positions[1] < len(streams[1]):
        which = data.draw(st.sampled_from([i for i in (0, 1) if positions[i] < len(streams[i])]))
        size = data.draw(st.integers(1, 5))
        shared.process(streams[which][positions[which] : positions[which] + size])
        positions[which] += size
    single = run(events)
    assert {k: c.stage for k, c in shared.customers.items()} == {k: c.stage for k, c in single.customers.items()}
    assert {k: c.signal_counts for k, c in shared.customers.items()} == {
        k: c.signal_counts for k, c in single.customers.items()
    }


@settings(max_examples=300)
@given(sequences_with_identity, st.data())
def test_the_preview_s_states_only_engine_ends_in_the_engine_s_states(
    events: list[Touchpoint], data: st.DataObject
) -> None:
    # In place, only the conditions an event can affect, no changes kept: the same states to the byte.
    batches = data.draw(st.lists(st.integers(1, 7), max_size=12))
    for rules in (RULES, TWO_PAID_ORDERS):
        full, states_only = InMemoryEngine(rules), InMemoryEngine(rules, states_only=True)
        for engine in (full, states_only):
            start = 0
            for size in [*batches, len(events)]:
                engine.process(events[start : start + size])
                start += size
            engine.advance_clock(T0 + timedelta(days=600))
        assert states_only.customers == full.customers
        assert states_only.identities == full.identities
        assert states_only.processed == full.processed
        assert not states_only.published


@settings(max_examples=200)
@given(sequences_with_identity, sequences_with_identity)
def test_a_batch_never_changes_the_states_it_was_given(first: list[Touchpoint], second: list[Touchpoint]) -> None:
    # The store writes the states that differ from those it loaded: a batch works on copies, which
    # share unchanged containers (event times, traits) with the loaded states and never change them.
    engine = run(first)
    loaded = dict(engine.customers)
    before = {cid: msgspec.msgpack.encode(c) for cid, c in loaded.items()}
    state = BatchState(dict(loaded), dict(engine.identities), set(engine.processed), loaded=dict(loaded))
    apply_batch(second, state, RULES)
    assert {cid: msgspec.msgpack.encode(c) for cid, c in loaded.items()} == before
