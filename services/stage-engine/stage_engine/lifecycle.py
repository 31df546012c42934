"""Lifecycle decisions: customer state + one touchpoint (or the clock) -> new state + changes. Pure.

Exact behaviour (DESIGN section 2, and what it leaves open):
- Stage rules are conditions on accumulated signals (counts, event times, revenue). After every
  event the customer climbs as far as the rules allow; several stages at once are one change that
  lists the stages in between as ``skipped``. Stages never move back.
- Windows use event times, so a late event counts where it belongs; since every condition only
  grows with more events, the final stage does not depend on the order events arrive in.
- Health moves by events as they are applied (an order while churned reactivates, an activity while
  at risk makes active again, a second order after reactivation makes active, a churn event churns)
  and by inactivity: when the latest activity is older than the thresholds, at the engine's clock
  (``tick``) or at the time of a newer event (so a replay gives the same history as a live run).
  An event older than the latest activity counts for stages but does not move health: it says
  nothing new about how recently the customer was active.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec

from clm_shared.categories import Category
from clm_shared.schemas.lifecycle import STAGE_ORDER, Health, Stage
from clm_shared.schemas.touchpoint import AnyTouchpoint
from stage_engine.rules import Climb, CompiledRules, Match, Rules

DISCOVERY_RULE = "first_touchpoint"
# The shape of stored states; ``stage_engine.stored_state`` upgrades older rows to it.
STATE_VERSION = 1


class CustomerState(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything the rules need about one customer; persisted as it is (``stage_engine.stored_state``).

    A msgspec ``Struct`` rather than a pydantic model: copied, encoded and decoded for every touchpoint,
    where pydantic's copies and validation were a third of the engine's time.
    """

    version: int = STATE_VERSION  # shape of the stored state (see stage_engine.stored_state)
    customer_id: str
    stage: Stage | None = None
    health: Health = Health.ACTIVE
    signal_counts: dict[str, int] = msgspec.field(default_factory=dict)
    # Sorted event times, kept only while a windowed rule needs them.
    signal_times: dict[str, list[datetime]] = msgspec.field(default_factory=dict)
    signal_revenue: dict[str, float] = msgspec.field(default_factory=dict)
    last_activity_at: datetime | None = None
    orders_since_reactivation: int = 0
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    first_seen_at: datetime | None = None
    sequence: int = 0  # number of lifecycle events published for this customer so far
    origin: str = ""  # the messageId that created this profile: part of its event ids


class StageMove(msgspec.Struct, frozen=True):
    """A stage change; a msgspec ``Struct``, whose construction in C costs a fraction of a frozen dataclass's."""

    from_stage: Stage | None
    to_stage: Stage
    skipped: tuple[Stage, ...]
    rule: str
    message_id: str | None
    event_time: datetime


class HealthMove(msgspec.Struct, frozen=True):
    """A health change (a ``Struct``, as ``StageMove``)."""

    from_health: Health
    to_health: Health
    rule: str
    message_id: str | None
    event_time: datetime


Change = StageMove | HealthMove


@dataclass
class Outcome:
    state: CustomerState
    changes: list[Change] = field(default_factory=list)


def new_customer(customer_id: str, origin: str = "") -> CustomerState:
    return CustomerState(customer_id=customer_id, origin=origin)


def copy_state(state: CustomerState) -> CustomerState:
    """A copy whose containers can be changed without touching the original (a shallow copy with fresh containers)."""
    return msgspec.structs.replace(
        state,
        signal_counts=dict(state.signal_counts),
        signal_times={name: list(times) for name, times in state.signal_times.items()},
        signal_revenue=dict(state.signal_revenue),
        traits=dict(state.traits),
    )


def apply_touchpoint(
    state: CustomerState,
    tp: AnyTouchpoint,
    rules: CompiledRules,
    changes: list[Change],
    *,
    in_place: bool = False,
    settled: bool = False,
) -> CustomerState:
    """Apply one touchpoint (identity calls only touch traits): the new state; its changes go to ``changes``.

    The caller's list (cleared and reused) rather than a result object per call: most touchpoints
    change nothing, and this runs for every one.

    For a caller that built every state from nothing under these ``rules`` and keeps no other
    reference to them (the preview), the same decisions at less cost: ``in_place`` changes ``state``
    itself instead of a copy (also right for a state this caller copied itself); ``settled`` says no
    condition of a stage above held before this event (true after every climb), so only the
    conditions on the signals it matches can newly hold.
    """
    if not in_place:
        # A copy with its own counters; the traits and the lists of event times stay shared with the
        # original until changed, and are then replaced, never changed in place (below).
        state = msgspec.structs.replace(
            state,
            signal_counts=dict(state.signal_counts),
            signal_times=dict(state.signal_times),
            signal_revenue=dict(state.signal_revenue),
        )
    if tp.traits:
        state.traits = {**state.traits, **tp.traits}
    if tp.category is Category.IDENTITY:
        return state
    at = tp.timestamp
    if state.first_seen_at is None or at < state.first_seen_at:
        state.first_seen_at = at
    match = rules.match(tp)
    last_activity = state.last_activity_at
    is_newer = last_activity is None or at > last_activity
    is_activity = match.activity
    if is_activity and is_newer and state.stage in rules.health_stages:
        _inactivity(state, at, rules, changes, inclusive=False)
    names = match.names
    if names:
        counts = state.signal_counts
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        revenue = tp.revenue if tp.properties else 0.0  # the property looks in the properties: none, no revenue
        if revenue:
            totals = state.signal_revenue
            for name in names:
                totals[name] = totals.get(name, 0.0) + revenue
        for name in match.timed[state.stage]:
            # A new list, never the old one changed: a copied state shares its lists with the original.
            times = state.signal_times.get(name)
            if times is None:
                times = [at]
            else:
                times = times.copy()
                bisect.insort(times, at)
            state.signal_times[name] = times
    stage = state.stage
    if stage is None:
        stage = state.stage = Stage.DISCOVERY
        changes.append(StageMove(None, Stage.DISCOVERY, (), DISCOVERY_RULE, tp.message_id, at))
        settled = False  # a new stage: its conditions were never tried
    climbs = match.climbs[stage] if settled else rules.climbs[stage]
    if climbs:
        _climb(state, rules, changes, tp.message_id, at, climbs)
    if match.health and (is_newer or not is_activity) and state.stage in rules.health_stages:
        _health_on_event(state, tp, match, changes, is_newer=is_newer)
    if is_activity and is_newer:
        state.last_activity_at = at
    return state


def tick(state: CustomerState, now: datetime, rules: Rules) -> Outcome:
    """The engine's clock moved to ``now``: inactivity may make the customer at risk or churned."""
    compiled = rules.compiled()
    state = copy_state(state)
    outcome = Outcome(state)
    if state.stage in compiled.health_stages:
        _inactivity(state, now, compiled, outcome.changes, inclusive=True)
    return outcome


def next_timer(state: CustomerState, rules: Rules) -> datetime | None:
    """When the clock next matters for this customer (None: no inactivity move is pending)."""
    compiled = rules.compiled()
    if state.last_activity_at is None or state.stage not in compiled.health_stages:
        return None
    if state.health in (Health.ACTIVE, Health.REACTIVATED):
        return state.last_activity_at + compiled.at_risk_after
    if state.health is Health.AT_RISK:
        return state.last_activity_at + compiled.churned_after
    return None


def merge(known: CustomerState, anonymous: CustomerState, rules: Rules, *, message_id: str, at: datetime) -> Outcome:
    """Fold an anonymous profile into a known one: counters add up, the higher stage wins.

    Health comes from whichever profile was active more recently; traits of the known profile win.
    """
    merged = copy_state(known)
    outcome = Outcome(merged)
    for name, count in anonymous.signal_counts.items():
        merged.signal_counts[name] = merged.signal_counts.get(name, 0) + count
    for name, times in anonymous.signal_times.items():
        merged.signal_times[name] = sorted([*merged.signal_times.get(name, []), *times])
    for name, revenue in anonymous.signal_revenue.items():
        merged.signal_revenue[name] = merged.signal_revenue.get(name, 0.0) + revenue
    merged.traits = {**anonymous.traits, **known.traits}
    merged.first_seen_at = _earliest(known.first_seen_at, anonymous.first_seen_at)
    if (anonymous.last_activity_at or datetime.min.replace(tzinfo=at.tzinfo)) > (
        known.last_activity_at or datetime.min.replace(tzinfo=at.tzinfo)
    ):
        merged.last_activity_at = anonymous.last_activity_at
        if anonymous.health != merged.health:
            outcome.changes.append(HealthMove(merged.health, anonymous.health, "merged", message_id, at))
            merged.health = anonymous.health
        merged.orders_since_reactivation = anonymous.orders_since_reactivation
    # One stage change at most: to the higher of the two stages, and on as far as the rules allow.
    start = merged.stage
    if _rank(anonymous.stage) > _rank(merged.stage):
        merged.stage = anonymous.stage
    compiled = rules.compiled()
    climbed: list[Change] = []
    if merged.stage is not None:
        _climb(merged, compiled, climbed, message_id, at, compiled.climbs[merged.stage])
    if merged.stage is not None and merged.stage != start:
        rule = climbed[-1].rule if climbed else "merged"
        outcome.changes.append(StageMove(start, merged.stage, _between(start, merged.stage), rule, message_id, at))
    _prune(merged, compiled)
    return outcome


# -- stages ---------------------------------------------------------------------------------------


def _count_within(times: list[datetime], count: int, window: timedelta) -> bool:
    """Whether some ``count`` of the sorted times lie within ``window`` of each other."""
    # A plain loop: a generator in any() cost three times as much on the short lists seen here.
    for first in range(len(times) - count + 1):  # noqa: SIM110
        if times[first + count - 1] - times[first] <= window:
            return True
    return False


def _climb(
    state: CustomerState,
    rules: CompiledRules,
    changes: list[Change],
    message_id: str | None,
    at: datetime,
    climbs: tuple[Climb, ...],
) -> None:
    """Move up as far as the rules allow; one change per event, listing the stages passed through.

    ``climbs``: those to try from the stage the customer is in; the state may be settled before the
    event (``apply_touchpoint``), and then only the conditions on the signals it matched are tried:
    every other one reads what did not change and did not hold. Conditions only grow with more
    events, and each stage reached is tried in full.
    """
    start = state.stage
    last: tuple[Stage, str] | None = None
    while (step := _next_stage(state, climbs)) is not None:
        last = step
        state.stage = step[0]
        climbs = rules.climbs[step[0]]
    if last is not None:
        changes.append(StageMove(start, last[0], _between(start, last[0]), last[1], message_id, at))
        _prune(state, rules)


def _next_stage(state: CustomerState, climbs: tuple[Climb, ...]) -> tuple[Stage, str] | None:
    """The highest stage of ``climbs`` the customer may move to, with the rule that allows it."""
    counts, revenue, times = state.signal_counts, state.signal_revenue, state.signal_times
    for climb in climbs:
        for name, signal, count, window, at_least in climb.checks:
            if at_least is not None:
                holds = revenue.get(signal, 0.0) >= at_least
            elif window is None:
                holds = counts.get(signal, 0) >= count
            else:
                holds = _count_within(times.get(signal, []), count, window)
            if holds:
                return climb.stage, name
    return None


def _prune(state: CustomerState, rules: CompiledRules) -> None:
    needed = rules.windowed[state.stage]
    for name in [n for n in state.signal_times if n not in needed]:
        del state.signal_times[name]


def _between(start: Stage | None, end: Stage) -> tuple[Stage, ...]:
    return tuple(STAGE_ORDER[_rank(start) + 1 : end.rank])


def _rank(stage: Stage | None) -> int:
    return -1 if stage is None else stage.rank


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min((t for t in (a, b) if t is not None), default=None)


# -- health ---------------------------------------------------------------------------------------


def _inactivity(
    state: CustomerState, now: datetime, rules: CompiledRules, changes: list[Change], *, inclusive: bool
) -> None:
    """At risk, then churned, when the latest activity is older than the thresholds at ``now``.

    The change's time is the moment the threshold passed, whether the clock or a newer event noticed.
    An event exactly at the threshold still counts as activity in time (``inclusive`` is the clock's).
    """
    last = state.last_activity_at
    if last is None:
        return
    idle = now - last
    if state.health in (Health.ACTIVE, Health.REACTIVATED) and (
        idle >= rules.at_risk_after if inclusive else idle > rules.at_risk_after
    ):
        _move_health(state, Health.AT_RISK, "inactive", None, last + rules.at_risk_after, changes)
    if state.health is Health.AT_RISK and (idle >= rules.churned_after if inclusive else idle > rules.churned_after):
        _move_health(state, Health.CHURNED, "inactive", None, last + rules.churned_after, changes)


def _health_on_event(
    state: CustomerState, tp: AnyTouchpoint, match: Match, changes: list[Change], *, is_newer: bool
) -> None:
    """Health moved by the event itself (``is_newer``: later than the latest activity)."""
    health = state.health
    if match.churn:
        if health is not Health.CHURNED and is_newer:
            _move_health(state, Health.CHURNED, "churn_event", tp.message_id, tp.timestamp, changes)
        return
    if health is Health.CHURNED and match.order:
        state.orders_since_reactivation = 1
        _move_health(state, Health.REACTIVATED, "order_while_churned", tp.message_id, tp.timestamp, changes)
    elif health is Health.AT_RISK and match.activity:
        _move_health(state, Health.ACTIVE, "activity_while_at_risk", tp.message_id, tp.timestamp, changes)
    elif health is Health.REACTIVATED and match.order:
        state.orders_since_reactivation += 1
        if state.orders_since_reactivation >= 2:
            _move_health(state, Health.ACTIVE, "second_order_after_reactivation", tp.message_id, tp.timestamp, changes)


def _move_health(
    state: CustomerState, to: Health, rule: str, message_id: str | None, at: datetime, changes: list[Change]
) -> None:
    changes.append(HealthMove(state.health, to, rule, message_id, at))
    state.health = to
    if to is not Health.REACTIVATED:
        state.orders_since_reactivation = 0
