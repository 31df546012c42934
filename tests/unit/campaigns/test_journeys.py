"""Journeys, pure: entry, progress through waits and splits, sends through the guardrails, attribution."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.definitions import Campaign, Condition
from campaigns.guardrails import Guardrails, QuietHours, assign_variant, in_holdout
from campaigns.journeys import (
    CapLedger,
    Journeys,
    LiveCampaign,
    Plan,
    Profile,
    Run,
    Send,
    TriggerEvent,
    condition_holds,
    triggered_by,
)
from campaigns.registry import Status

T0 = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)  # a winter Wednesday, midday UTC: outside quiet hours
NIGHT = QuietHours(time(21), time(8))
PLAIN = Guardrails(quiet_hours=None, holdout_percent=0)
TEMPLATE = {"subject": "Hello", "html": "<p>Hello {{ name }}</p>", "text": "Hello {{ name }}"}
TEMPLATE_B = {"subject": "Still there?", "html": "<p>Your cart</p>", "text": "Your cart"}
CUSTOMER = "customer-1"


def campaign(**fields: Any) -> Campaign:
    data: dict[str, Any] = {
        "id": "welcome",
        "name": "Welcome",
        "trigger": {"event": "Signed Up"},
        "holdout_percent": 0,
        "steps": [{"type": "send", "name": "welcome", "template": TEMPLATE}],
    }
    data.update(fields)
    return Campaign.model_validate(data)


def cart_campaign(**fields: Any) -> Campaign:
    return campaign(
        id="abandoned-cart",
        name="Abandoned cart",
        trigger={"event": "Checkout Started"},
        steps=[
            {"type": "wait_for_event", "event": "Order Completed", "match": ["checkout_id"], "timeout": "1h"},
            {"type": "split", "variants": {"A": 50, "B": 50}},
            {"type": "send", "name": "reminder", "template": TEMPLATE},
            {"type": "wait_for_event", "event": "Order Completed", "match": ["checkout_id"], "timeout": "24h"},
            {"type": "send", "name": "last-call", "template": TEMPLATE, "variant_templates": {"B": TEMPLATE_B}},
        ],
        **fields,
    )


def journeys(
    *campaigns: Campaign,
    guardrails: Guardrails = PLAIN,
    now: datetime = T0,
    ledger: CapLedger | None = None,
    status: Status = "live",
) -> Journeys:
    live = {c.id: LiveCampaign(c, 1, status) for c in campaigns}
    ledger = ledger if ledger is not None else CapLedger(guardrails.frequency_cap, guardrails.frequency_window)
    return Journeys(guardrails, live, {}, ledger, now)


def event(
    name: str = "Signed Up",
    *,
    kind: str = "event",
    time: datetime = T0,
    customer: str = CUSTOMER,
    trigger_id: str = "msg-1",
    **properties: Any,
) -> TriggerEvent:
    return TriggerEvent(kind, customer, trigger_id, name, time, properties)  # type: ignore[arg-type]


def profile(customer: str = CUSTOMER, **fields: Any) -> Profile:
    return Profile(customer, email=f"{customer}@example.test", **fields)


def counts(plan: Plan) -> dict[tuple[str, str], int]:
    return {key: value for key, value in plan.counts.items() if value}


def only_send(plan: Plan) -> Send:
    assert len(plan.sends) == 1, plan.sends
    return plan.sends[0]


def position(run: Run) -> tuple[str, int, datetime | None, str | None]:
    """Where a run stands (a function, so earlier asserts do not narrow the types of later ones)."""
    return run.status, run.step, run.due_at, run.waiting_for


def enter(j: Journeys, trigger: TriggerEvent | None = None, who: Profile | None = None) -> Run:
    """Enter one run and give it a row id, as the store would."""
    j.on_trigger(trigger or event(), who or profile(), set())
    assert len(j.plan.new_runs) == 1, j.plan.new_runs
    run = j.plan.new_runs[0]
    run.run_id = 1
    return run


# -- triggers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "kind", "name", "matches"),
    [
        ({"stage_entered": "conversion"}, "stage", "conversion", True),
        ({"stage_entered": "conversion"}, "stage", "retention", False),
        ({"stage_entered": "conversion"}, "event", "conversion", False),
        ({"stage_entered": "conversion"}, "health", "conversion", False),
        ({"health_changed_to": "at_risk"}, "health", "at_risk", True),
        ({"health_changed_to": "at_risk"}, "health", "churned", False),
        ({"health_changed_to": "at_risk"}, "stage", "at_risk", False),
        ({"event": "Signed Up"}, "event", "Signed Up", True),
        ({"event": "Signed Up"}, "event", "signed up", False),
        ({"event": "Signed Up"}, "stage", "Signed Up", False),
    ],
)
def test_triggered_by(trigger: dict[str, str], kind: str, name: str, matches: bool) -> None:
    c = campaign(trigger=trigger)
    assert triggered_by(c, event(name, kind=kind)) is matches
    j = journeys(c)
    j.on_trigger(event(name, kind=kind), profile(), set())
    assert len(j.plan.new_runs) == int(matches)
    assert len(j.plan.sends) == int(matches)


def test_only_triggered_campaigns_start() -> None:
    welcome = campaign()
    loyal = campaign(id="loyal", trigger={"stage_entered": "loyalty"})
    j = journeys(welcome, loyal)
    j.on_trigger(event("loyalty", kind="stage"), profile(), set())
    assert [run.campaign_id for run in j.plan.new_runs] == ["loyal"]
    assert counts(j.plan) == {("loyal", "entered"): 1, ("loyal", "completed"): 1}


# -- audience --------------------------------------------------------------------------------------


def cond(field: str, op: str, value: Any = None) -> Condition:
    return Condition.model_validate({"field": field, "op": op, "value": value})


TRAITS = {"plan": "pro", "seats": 12, "vip": True, "tags": ["beta", "eu"], "address": {"country": "DE"}}
PROPERTIES = {"revenue": 120.5, "currency": "EUR", "items": 0}


@pytest.mark.parametrize(
    ("field", "op", "value", "holds"),
    [
        ("traits.plan", "eq", "pro", True),
        ("traits.plan", "eq", "free", False),
        ("traits.plan", "ne", "free", True),
        ("traits.plan", "in", ["pro", "team"], True),
        ("traits.plan", "in", ["free"], False),
        ("traits.plan", "not_in", ["free"], True),
        ("traits.seats", "gt", 10, True),
        ("traits.seats", "gt", 12, False),
        ("traits.seats", "gte", 12, True),
        ("traits.seats", "lt", 13, True),
        ("traits.seats", "lte", 11, False),
        ("traits.vip", "gt", 0, False),  # a bool is not a number
        ("traits.plan", "gt", 0, False),  # a string is not a number
        ("traits.missing", "gt", 0, False),
        ("traits.plan", "exists", None, True),
        ("traits.nope", "exists", None, False),
        ("traits.nope", "missing", None, True),
        ("traits.plan", "missing", None, False),
        ("traits.address.country", "eq", "DE", True),  # nested
        ("traits.plan.country", "missing", None, True),  # through a non-dict
        ("traits.tags", "contains", "beta", True),
        ("traits.tags", "contains", "us", False),
        ("traits.seats", "contains", 1, False),
        ("properties.revenue", "gt", 100, True),
        ("properties.revenue", "lte", 100, False),
        ("properties.currency", "in", ["EUR", "USD"], True),
        ("properties.items", "exists", None, True),  # 0 exists
        ("properties.items", "eq", 0, True),
        ("properties.coupon", "missing", None, True),
        ("properties.plan", "exists", None, False),  # properties are not traits
        ("stage", "eq", "conversion", True),
        ("stage", "in", ["loyalty", "advocacy"], False),
        ("health", "eq", "active", True),
        ("health", "missing", None, False),
    ],
)
def test_condition_holds(field: str, op: str, value: Any, holds: bool) -> None:
    who = profile(traits=TRAITS, stage="conversion", health="active")
    assert condition_holds(cond(field, op, value), who, PROPERTIES) is holds


def test_stage_missing_when_profile_has_none() -> None:
    assert condition_holds(cond("stage", "missing"), profile(), {})
    assert not condition_holds(cond("stage", "exists"), profile(), {})


def test_audience_gates_entry() -> None:
    c = campaign(
        audience=[
            {"field": "traits.plan", "op": "in", "value": ["pro", "team"]},
            {"field": "properties.revenue", "op": "gt", "value": 100},
            {"field": "stage", "op": "eq", "value": "conversion"},
        ]
    )
    fits = profile(traits={"plan": "pro"}, stage="conversion")
    j = journeys(c)
    j.on_trigger(event(revenue=150), fits, set())
    assert len(j.plan.new_runs) == 1

    for who, revenue in [
        (fits, 50),  # a property fails
        (profile(traits={"plan": "free"}, stage="conversion"), 150),  # a trait fails
        (profile(traits={"plan": "pro"}, stage="retention"), 150),  # the stage fails
        (profile(stage="conversion"), 150),  # the trait is missing
    ]:
        j = journeys(c)
        existing: set[tuple[str, str]] = set()
        j.on_trigger(event(revenue=revenue), who, existing)
        assert j.plan.new_runs == []
        assert j.plan.sends == []
        assert counts(j.plan) == {}
        assert existing == set()  # not in the audience now: the same trigger may be looked at again


# -- entry guards ----------------------------------------------------------------------------------


def test_stale_trigger_is_held_without_a_run() -> None:
    j = journeys(campaign(), now=T0)
    existing: set[tuple[str, str]] = set()
    j.on_trigger(event(time=T0 - timedelta(hours=24, seconds=1)), profile(), existing)
    assert j.plan.new_runs == []
    send = only_send(j.plan)
    assert (send.status, send.reason, send.step, send.run) == ("held", "stale", -1, None)
    assert send.due_at == T0 - timedelta(hours=24, seconds=1)
    assert send.created_at == T0
    assert counts(j.plan) == {("welcome", "held:stale"): 1}
    assert existing == {("welcome", "msg-1")}


def test_trigger_at_the_max_age_is_not_stale() -> None:
    j = journeys(campaign(), now=T0)
    j.on_trigger(event(time=T0 - timedelta(hours=24)), profile(), set())
    assert len(j.plan.new_runs) == 1
    assert only_send(j.plan).status == "pending"
    assert only_send(j.plan).due_at == T0  # max(event time, now)


def test_max_trigger_age_comes_from_guardrails() -> None:
    j = journeys(campaign(), guardrails=Guardrails(quiet_hours=None, max_trigger_age=timedelta(minutes=5)))
    j.on_trigger(event(time=T0 - timedelta(minutes=6)), profile(), set())
    assert only_send(j.plan).reason == "stale"


def test_paused_campaign_holds() -> None:
    j = journeys(campaign(), status="paused")
    existing: set[tuple[str, str]] = set()
    j.on_trigger(event(), profile(), existing)
    assert j.plan.new_runs == []
    send = only_send(j.plan)
    assert (send.status, send.reason, send.step, send.step_name) == ("held", "paused", -1, "entry")
    assert counts(j.plan) == {("welcome", "held:paused"): 1}
    assert existing == {("welcome", "msg-1")}


def test_archived_campaign_is_ignored() -> None:
    j = journeys(campaign(), status="archived")
    j.on_trigger(event(), profile(), set())
    assert j.plan.new_runs == [] and j.plan.sends == [] and counts(j.plan) == {}


def holdout_customer(campaign_id: str, percent: float) -> str:
    return next(f"c-{i}" for i in range(1000) if in_holdout(f"c-{i}", campaign_id, percent))


def test_holdout_customer_gets_a_holdout_run_and_no_send() -> None:
    c = cart_campaign(holdout_percent=50)
    customer = holdout_customer(c.id, 50)
    j = journeys(c)
    j.on_trigger(event("Checkout Started", customer=customer, checkout_id="k1"), profile(customer), set())
    [run] = j.plan.new_runs
    assert (run.status, run.holdout, run.step, run.due_at, run.waiting_for) == ("holdout", True, 0, None, None)
    send = only_send(j.plan)
    assert (send.status, send.reason, send.step, send.run) == ("held", "holdout", -1, run)
    assert send.customer_id == customer
    assert counts(j.plan) == {
        (c.id, "entered"): 1,
        (c.id, "holdout"): 1,
        (c.id, "held:holdout"): 1,
    }
    assert j.plan.timers == {}  # a holdout run never waits


def test_customer_outside_holdout_runs_normally() -> None:
    c = campaign(holdout_percent=50)
    customer = next(f"c-{i}" for i in range(1000) if not in_holdout(f"c-{i}", c.id, 50))
    j = journeys(c)
    j.on_trigger(event(customer=customer), profile(customer), set())
    [run] = j.plan.new_runs
    assert (run.status, run.holdout) == ("done", False)
    assert only_send(j.plan).status == "pending"


def test_holdout_percent_defaults_to_guardrails() -> None:
    c = campaign(holdout_percent=None)
    customer = holdout_customer(c.id, 30)
    j = journeys(c, guardrails=Guardrails(quiet_hours=None, holdout_percent=30))
    j.on_trigger(event(customer=customer), profile(customer), set())
    assert j.plan.new_runs[0].status == "holdout"
    j = journeys(c, guardrails=Guardrails(quiet_hours=None, holdout_percent=0))
    j.on_trigger(event(customer=customer), profile(customer), set())
    assert j.plan.new_runs[0].status == "done"


def test_existing_trigger_starts_no_second_run() -> None:
    j = journeys(campaign())
    j.on_trigger(event(), profile(), {("welcome", "msg-1")})
    assert j.plan.new_runs == [] and j.plan.sends == [] and counts(j.plan) == {}


def test_same_trigger_twice_in_a_batch_starts_one_run() -> None:
    j = journeys(campaign())
    existing: set[tuple[str, str]] = set()
    j.on_trigger(event(), profile(), existing)
    j.on_trigger(event(), profile(), existing)
    assert len(j.plan.new_runs) == 1
    assert len(j.plan.sends) == 1
    j.on_trigger(event(trigger_id="msg-2"), profile(), existing)  # another trigger: another run
    assert len(j.plan.new_runs) == 2
    assert existing == {("welcome", "msg-1"), ("welcome", "msg-2")}


# -- a welcome: one send ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_time", "now", "due"),
    [
        (T0, T0, T0),
        (T0 - timedelta(hours=2), T0, T0),  # processed late: sent now, not in the past
        (T0 + timedelta(minutes=5), T0, T0 + timedelta(minutes=5)),  # a clock ahead: at the event time
    ],
)
def test_welcome_sends_once_and_completes(event_time: datetime, now: datetime, due: datetime) -> None:
    j = journeys(campaign(), now=now)
    j.on_trigger(event(time=event_time, plan="pro"), profile(), set())
    [run] = j.plan.new_runs
    assert run.status == "done"
    assert (run.campaign_id, run.version, run.customer_id, run.trigger_id) == ("welcome", 1, CUSTOMER, "msg-1")
    assert run.entered_at == event_time
    assert run.step == 1
    assert run.due_at is None and run.waiting_for is None
    assert run.trigger == {
        "kind": "event",
        "name": "Signed Up",
        "time": event_time.isoformat(),
        "properties": {"plan": "pro"},
    }
    send = only_send(j.plan)
    assert (send.status, send.reason, send.step, send.step_name, send.channel) == (
        "pending",
        None,
        0,
        "welcome",
        "email",
    )
    assert send.run is run
    assert send.due_at == due
    assert send.created_at == now
    assert (send.variant, send.transactional) == (None, False)
    assert counts(j.plan) == {("welcome", "entered"): 1, ("welcome", "completed"): 1}
    assert j.plan.changed_runs == []  # a new run is written as new, not as changed


@settings(max_examples=200)
@given(
    lag=st.integers(-3600, 24 * 3600),
    now=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)),
    zone=st.sampled_from([None, "America/New_York", "Asia/Tokyo", "Nope/Zone"]),
)
def test_entry_send_is_never_early_nor_quiet(lag: int, now: datetime, zone: str | None) -> None:
    event_time = now - timedelta(seconds=lag)
    j = journeys(campaign(), guardrails=Guardrails(quiet_hours=NIGHT, holdout_percent=0), now=now)
    j.on_trigger(event(time=event_time), profile(timezone=zone), set())
    send = only_send(j.plan)
    assert send.status == "pending"
    assert send.due_at >= max(event_time, now)
    assert send.due_at - max(event_time, now) <= timedelta(hours=12)
    assert NIGHT.release(send.due_at, zone) == send.due_at  # not inside quiet hours
    assert (send.reason == "quiet_hours") is (send.due_at != max(event_time, now))


# -- an abandoned cart: waits, a split, variants ---------------------------------------------------


def test_abandoned_cart_waits_for_the_order() -> None:
    c = cart_campaign()
    j = journeys(c)
    run = enter(j, event("Checkout Started", checkout_id="k1"))
    assert (run.status, run.step) == ("waiting", 0)
    assert run.waiting_for == "Order Completed"
    assert run.due_at == T0 + timedelta(hours=1)
    assert run.variant is None
    assert j.plan.sends == []
    assert counts(j.plan) == {(c.id, "entered"): 1}
    assert list(j.plan.timers.values()) == [run]


def test_abandoned_cart_order_with_the_same_checkout_exits() -> None:
    c = cart_campaign()
    run = enter(journeys(c), event("Checkout Started", checkout_id="k1"))
    at = T0 + timedelta(minutes=20)
    j = journeys(c, now=at)
    j.on_event([run], profile(), "Order Completed", {"checkout_id": "k1", "revenue": 40}, at)
    assert (run.status, run.due_at, run.waiting_for, run.step_since) == ("exited", None, None, at)
    assert j.plan.changed_runs == [run]
    assert list(j.plan.timers.values()) == [run]  # its timer goes
    assert j.plan.sends == []
    assert counts(j.plan) == {(c.id, "exited"): 1}


@pytest.mark.parametrize(
    ("name", "properties"),
    [
        ("Order Completed", {"checkout_id": "k2"}),
        ("Order Completed", {}),
        ("Product Viewed", {"checkout_id": "k1"}),
    ],
)
def test_abandoned_cart_other_events_keep_waiting(name: str, properties: dict[str, Any]) -> None:
    c = cart_campaign()
    run = enter(journeys(c), event("Checkout Started", checkout_id="k1"))
    j = journeys(c, now=T0 + timedelta(minutes=20))
    j.on_event([run], profile(), name, properties, T0 + timedelta(minutes=20))
    assert (run.status, run.step, run.waiting_for) == ("waiting", 0, "Order Completed")
    assert run.due_at == T0 + timedelta(hours=1)
    assert j.plan.changed_runs == [] and j.plan.timers == {} and counts(j.plan) == {}


def test_abandoned_cart_reminders_on_timers() -> None:
    c = cart_campaign()
    run = enter(journeys(c), event("Checkout Started", checkout_id="k1"))
    first_due = T0 + timedelta(hours=1)
    expected_variant = assign_variant(CUSTOMER, c.id, {"A": 50, "B": 50})

    # the 1h wait times out: split, send the reminder, wait 24h more
    j = journeys(c, now=first_due + timedelta(seconds=3))
    j.on_timer(run, profile())
    reminder = only_send(j.plan)
    assert (reminder.step, reminder.step_name, reminder.status) == (2, "reminder", "pending")
    assert reminder.variant == expected_variant
    assert reminder.due_at == first_due + timedelta(seconds=3)  # processed 3s late: sent now
    assert (run.status, run.step, run.variant) == ("waiting", 3, expected_variant)
    assert run.waiting_for == "Order Completed"
    assert run.due_at == first_due + timedelta(hours=24)  # from the due time, not from the late now
    assert run.step_since == first_due
    assert j.plan.changed_runs == [run]
    assert counts(j.plan) == {}

    # the 24h wait times out: the last call, in the run's variant, and the run is done
    second_due = run.due_at
    j = journeys(c, now=second_due)
    j.on_timer(run, profile())
    last_call = only_send(j.plan)
    assert (last_call.step, last_call.step_name, last_call.status) == (4, "last-call", "pending")
    assert last_call.variant == expected_variant
    assert last_call.due_at == second_due
    assert position(run) == ("done", 5, None, None)
    assert counts(j.plan) == {(c.id, "completed"): 1}

    # a late duplicate timer does nothing
    j = journeys(c, now=second_due)
    j.on_timer(run, profile())
    assert j.plan.sends == [] and counts(j.plan) == {}


def test_abandoned_cart_both_variants_happen() -> None:
    c = cart_campaign()
    seen: set[str | None] = set()
    for i in range(40):
        customer = f"c-{i}"
        run = enter(journeys(c), event("Checkout Started", customer=customer, checkout_id="k"), profile(customer))
        j = journeys(c, now=T0 + timedelta(hours=1))
        j.on_timer(run, profile(customer))
        seen.add(only_send(j.plan).variant)
    assert seen == {"A", "B"}


def test_only_variant_step_sends_to_its_variant_only() -> None:
    c = campaign(
        steps=[
            {"type": "split", "variants": {"A": 1, "B": 1}},
            {"type": "send", "name": "for-a", "template": TEMPLATE, "only_variant": "A"},
            {"type": "send", "name": "for-b", "template": TEMPLATE, "only_variant": "B"},
            {"type": "send", "name": "for-all", "template": TEMPLATE},
        ]
    )
    for customer in ("c-1", "c-2", "c-3", "c-4"):
        j = journeys(c)
        run = enter(j, event(customer=customer), profile(customer))
        variant = assign_variant(customer, c.id, {"A": 1, "B": 1})
        assert run.variant == variant
        assert [s.step_name for s in j.plan.sends] == [f"for-{variant.lower()}", "for-all"]
        assert {s.variant for s in j.plan.sends} == {variant}


def test_wait_then_send() -> None:
    c = campaign(steps=[{"type": "wait", "duration": "2d"}, {"type": "send", "name": "nudge", "template": TEMPLATE}])
    run = enter(journeys(c))
    assert (run.status, run.due_at, run.waiting_for) == ("waiting", T0 + timedelta(days=2), None)
    j = journeys(c, now=T0 + timedelta(days=2))
    j.on_timer(run, profile())
    assert only_send(j.plan).due_at == T0 + timedelta(days=2)
    assert run.status == "done"


def test_wait_for_event_continue_and_timeout_exit() -> None:
    c = campaign(
        id="onboarding",
        steps=[
            {"type": "wait_for_event", "event": "Profile Completed", "timeout": "3d", "on_event": "continue"},
            {"type": "send", "name": "thanks", "template": TEMPLATE},
            {"type": "wait_for_event", "event": "Invite Sent", "timeout": "1d", "on_timeout": "exit"},
            {"type": "send", "name": "never", "template": TEMPLATE},
        ],
    )
    run = enter(journeys(c))
    at = T0 + timedelta(hours=5)
    j = journeys(c, now=at)
    j.on_event([run], profile(), "Profile Completed", {}, at)
    assert only_send(j.plan).step_name == "thanks"
    assert only_send(j.plan).due_at == at
    assert (run.status, run.step, run.waiting_for, run.due_at) == ("waiting", 2, "Invite Sent", at + timedelta(days=1))
    j = journeys(c, now=at + timedelta(days=1))
    j.on_timer(run, profile())
    assert j.plan.sends == []
    assert (run.status, run.due_at) == ("exited", None)
    assert counts(j.plan) == {(c.id, "exited"): 1}


def test_exit_on_event_ends_a_run() -> None:
    c = cart_campaign(exit_on=["Unsubscribed"])
    run = enter(journeys(c), event("Checkout Started", checkout_id="k1"))
    at = T0 + timedelta(minutes=10)
    j = journeys(c, now=at)
    j.on_event([run], profile(), "Unsubscribed", {}, at)
    assert (run.status, run.due_at, run.waiting_for) == ("exited", None, None)
    assert counts(j.plan) == {(c.id, "exited"): 1}
    # an exited run ignores later events and timers
    j = journeys(c, now=at)
    j.on_event([run], profile(), "Unsubscribed", {}, at)
    j.on_event([run], profile(), "Order Completed", {"checkout_id": "k1"}, at)
    j.on_timer(run, profile())
    assert counts(j.plan) == {} and j.plan.sends == [] and j.plan.changed_runs == []


def test_events_do_not_touch_holdout_runs() -> None:
    c = cart_campaign(holdout_percent=50, exit_on=["Unsubscribed"])
    customer = holdout_customer(c.id, 50)
    j = journeys(c)
    j.on_trigger(event("Checkout Started", customer=customer, checkout_id="k1"), profile(customer), set())
    run = j.plan.new_runs[0]
    j = journeys(c)
    j.on_event([run], profile(customer), "Unsubscribed", {}, T0)
    j.on_timer(run, profile(customer))
    assert run.status == "holdout"
    assert counts(j.plan) == {} and j.plan.sends == []


# -- the frequency cap -----------------------------------------------------------------------------


def full_ledger(cap: int = 3) -> CapLedger:
    recent = [T0 - timedelta(days=d) for d in (1, 2, 3)]
    return CapLedger(cap, timedelta(days=7), {CUSTOMER: recent})


def test_frequency_cap_holds_a_send() -> None:
    ledger = full_ledger()
    j = journeys(campaign(), ledger=ledger)
    run = enter(j)
    send = only_send(j.plan)
    assert (send.status, send.reason, send.due_at) == ("held", "capped", T0)
    assert run.status == "done"  # the run moves on; the send is held
    assert counts(j.plan) == {("welcome", "entered"): 1, ("welcome", "held:capped"): 1, ("welcome", "completed"): 1}
    assert len(ledger.times[CUSTOMER]) == 3  # a held send is not counted


def test_transactional_send_passes_the_cap_and_is_not_counted() -> None:
    ledger = full_ledger()
    j = journeys(campaign(id="receipt", transactional=True), ledger=ledger)
    enter(j)
    send = only_send(j.plan)
    assert (send.status, send.reason, send.transactional) == ("pending", None, True)
    assert len(ledger.times[CUSTOMER]) == 3


def test_cap_counts_sends_in_the_window_only() -> None:
    old = [T0 - timedelta(days=8), T0 - timedelta(days=9), T0 - timedelta(days=1)]
    ledger = CapLedger(3, timedelta(days=7), {CUSTOMER: old})
    j = journeys(campaign(), ledger=ledger)
    enter(j)
    assert only_send(j.plan).status == "pending"
    assert ledger.times[CUSTOMER][-1] == T0  # recorded
    # the same batch: two more sends fit (2 in the window), the third is held
    c2 = campaign(
        id="many",
        steps=[{"type": "send", "name": f"s{i}", "template": TEMPLATE} for i in range(3)],
    )
    j = journeys(c2, ledger=ledger)
    enter(j)
    assert [s.status for s in j.plan.sends] == ["pending", "held", "held"]
    assert [s.reason for s in j.plan.sends] == [None, "capped", "capped"]


def test_cap_other_customers_unaffected() -> None:
    j = journeys(campaign(), ledger=full_ledger())
    enter(j, event(customer="other"), profile("other"))
    assert only_send(j.plan).status == "pending"


# -- quiet hours -----------------------------------------------------------------------------------

QUIET = Guardrails(quiet_hours=NIGHT, holdout_percent=0)
LATE = datetime(2026, 1, 14, 22, 30, tzinfo=UTC)


def test_quiet_hours_move_a_send() -> None:
    j = journeys(campaign(), guardrails=QUIET, now=LATE)
    enter(j, event(time=LATE))
    send = only_send(j.plan)
    assert (send.status, send.reason) == ("pending", "quiet_hours")
    assert send.due_at == datetime(2026, 1, 15, 8, tzinfo=UTC)
    assert counts(j.plan) == {
        ("welcome", "entered"): 1,
        ("welcome", "held:quiet_hours"): 1,
        ("welcome", "completed"): 1,
    }


def test_quiet_hours_in_customer_timezone() -> None:
    # 04:00 UTC is 23:00 in New York: moved to 08:00 New York = 13:00 UTC
    at = datetime(2026, 1, 15, 4, tzinfo=UTC)
    j = journeys(campaign(), guardrails=QUIET, now=at)
    enter(j, event(time=at), profile(timezone="America/New_York"))
    assert only_send(j.plan).due_at == datetime(2026, 1, 15, 13, tzinfo=UTC)
    # 22:30 UTC is 17:30 in New York: not moved
    j = journeys(campaign(), guardrails=QUIET, now=LATE)
    enter(j, event(time=LATE), profile(timezone="America/New_York"))
    assert (only_send(j.plan).due_at, only_send(j.plan).reason) == (LATE, None)


@pytest.mark.parametrize("fields", [{"transactional": True}, {"quiet_hours": False}])
def test_quiet_hours_do_not_apply(fields: dict[str, Any]) -> None:
    j = journeys(campaign(**fields), guardrails=QUIET, now=LATE)
    enter(j, event(time=LATE))
    send = only_send(j.plan)
    assert (send.status, send.reason, send.due_at) == ("pending", None, LATE)
    assert ("welcome", "held:quiet_hours") not in counts(j.plan)


def test_quiet_hours_then_cap_uses_the_moved_time() -> None:
    """The cap is checked at the moved due time: sends near the morning count, not those near the evening."""
    morning = datetime(2026, 1, 15, 8, tzinfo=UTC)
    ledger = CapLedger(1, timedelta(hours=2), {CUSTOMER: [LATE - timedelta(hours=1)]})
    j = journeys(campaign(), guardrails=QUIET, now=LATE, ledger=ledger)
    enter(j, event(time=LATE))
    send = only_send(j.plan)
    assert (send.status, send.reason, send.due_at) == ("pending", "quiet_hours", morning)
    assert ledger.times[CUSTOMER][-1] == morning


def test_quiet_hours_on_a_timer_send() -> None:
    c = cart_campaign()
    run = enter(journeys(c, guardrails=QUIET), event("Checkout Started", checkout_id="k1"))
    run.due_at = LATE  # as if the wait ended late in the evening
    j = journeys(c, guardrails=QUIET, now=LATE)
    j.on_timer(run, profile())
    send = only_send(j.plan)
    assert (send.step_name, send.reason, send.due_at) == (
        "reminder",
        "quiet_hours",
        datetime(2026, 1, 15, 8, tzinfo=UTC),
    )
    assert run.due_at == LATE + timedelta(hours=24)  # the run's own schedule is not moved


# -- attribution -----------------------------------------------------------------------------------

ORDER = {"order_id": "o-1", "revenue": 99.0}


def stored_run(
    *,
    holdout: bool = False,
    entered_at: datetime = T0,
    converted_at: datetime | None = None,
    entry_converted: bool | None = None,
) -> Run:
    """A stored run; a treated one has its uplift conversion counted already (unless ``entry_converted``
    is False), so these tests see the attribution alone."""
    counted = (not holdout) if entry_converted is None else entry_converted
    return Run(
        campaign_id="welcome",
        version=1,
        customer_id=CUSTOMER,
        trigger_id="msg-1",
        trigger={},
        status="holdout" if holdout else "done",
        entered_at=entered_at,
        step_since=entered_at,
        step=1,
        holdout=holdout,
        converted_at=converted_at,
        entry_converted_at=entered_at if counted else None,
        run_id=7,
    )


def test_order_converts_a_run_sent_to_recently() -> None:
    run = stored_run()
    at = T0 + timedelta(days=2)
    j = journeys(campaign(), now=at)
    j.on_order([(run, T0)], at, ORDER)
    assert run.converted_at == at
    assert j.plan.conversions == [(run, at, ORDER)]
    assert j.plan.changed_runs == [run]
    assert counts(j.plan) == {("welcome", "converted"): 1}


@pytest.mark.parametrize(
    ("since_send", "converts"),
    [
        (timedelta(days=8), False),
        (timedelta(days=7), True),  # the window's end is inside
        (timedelta(days=7, seconds=1), False),
        (timedelta(0), True),
        (timedelta(seconds=-1), False),  # an order before the send is not caused by it
    ],
)
def test_attribution_window(since_send: timedelta, converts: bool) -> None:
    run = stored_run()
    j = journeys(campaign())
    j.on_order([(run, T0)], T0 + since_send, ORDER)
    assert (run.converted_at is not None) is converts
    assert len(j.plan.conversions) == int(converts)
    assert counts(j.plan) == ({("welcome", "converted"): 1} if converts else {})


def test_run_without_a_send_does_not_convert() -> None:
    run = stored_run()
    j = journeys(campaign())
    j.on_order([(run, None)], T0 + timedelta(hours=1), ORDER)
    assert run.converted_at is None and j.plan.conversions == [] and counts(j.plan) == {}


def test_holdout_run_converts_from_entry_without_a_conversion_event() -> None:
    run = stored_run(holdout=True, entered_at=T0)
    at = T0 + timedelta(days=1)
    j = journeys(campaign())
    j.on_order([(run, None)], at, ORDER)
    assert run.entry_converted_at == at and run.converted_at is None
    assert j.plan.conversions == []
    assert counts(j.plan) == {("welcome", "holdout_converted"): 1}
    # later than the window from entry: not counted
    late = stored_run(holdout=True, entered_at=T0)
    j = journeys(campaign())
    j.on_order([(late, None)], T0 + timedelta(days=8), ORDER)
    assert late.entry_converted_at is None and counts(j.plan) == {}


def test_a_treated_run_converts_from_entry_for_the_uplift_whether_or_not_it_was_sent_to() -> None:
    """Measured as the holdout is: a capped or exited run that was never sent to still counts."""
    never_sent, sent = stored_run(entry_converted=False), stored_run(entry_converted=False)
    sent.campaign_id = "cart"
    at = T0 + timedelta(days=1)
    j = journeys(campaign())
    j.on_order([(never_sent, None), (sent, T0)], at, ORDER)
    assert never_sent.entry_converted_at == at and never_sent.converted_at is None
    assert sent.entry_converted_at == at and sent.converted_at == at
    assert [run for run, _, _ in j.plan.conversions] == [sent]
    assert counts(j.plan) == {
        ("welcome", "treatment_converted"): 1,
        ("cart", "treatment_converted"): 1,
        ("cart", "converted"): 1,
    }
    j.on_order([(never_sent, None), (sent, T0)], at + timedelta(hours=1), ORDER)  # a second order: no more
    assert len(j.plan.conversions) == 1


def test_converted_run_is_not_converted_twice() -> None:
    first = T0 + timedelta(days=1)
    run = stored_run(converted_at=first)
    j = journeys(campaign())
    j.on_order([(run, T0)], T0 + timedelta(days=2), ORDER)
    assert run.converted_at == first
    assert j.plan.conversions == [] and counts(j.plan) == {} and j.plan.changed_runs == []
    # the same run twice in one order, or two orders in one batch: one conversion
    run = stored_run()
    j = journeys(campaign())
    j.on_order([(run, T0), (run, T0)], T0 + timedelta(days=1), ORDER)
    j.on_order([(run, T0)], T0 + timedelta(days=1, hours=1), {"order_id": "o-2"})
    assert run.converted_at == T0 + timedelta(days=1)
    assert len(j.plan.conversions) == 1
    assert counts(j.plan) == {("welcome", "converted"): 1}


def test_order_converts_each_attributable_run() -> None:
    recent, old = stored_run(), stored_run()
    recent.campaign_id, old.campaign_id = "welcome", "cart"
    j = journeys(campaign())
    at = T0 + timedelta(days=3)
    j.on_order([(recent, T0), (old, T0 - timedelta(days=10))], at, ORDER)
    assert [run for run, _, _ in j.plan.conversions] == [recent]
    assert counts(j.plan) == {("welcome", "converted"): 1}
