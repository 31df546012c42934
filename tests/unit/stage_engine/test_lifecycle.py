"""Every default rule, skipped stages, health moves, late events and merges, with no I/O and no clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from clm_shared.schemas.lifecycle import Health, Stage
from stage_engine.lifecycle import HealthMove, StageMove
from stage_engine.memory import InMemoryEngine
from stage_engine.rules import load_rules
from tests.utils.factories import T0, touchpoint

RULES = load_rules()
DAY = timedelta(days=1)


def engine() -> InMemoryEngine:
    return InMemoryEngine(RULES)


def send(e: InMemoryEngine, event: str, day: float = 0, customer: str = "user-1", **kw: Any) -> list[Any]:
    return [x.change for x in e.process([touchpoint(event, customer=customer, at=T0 + day * DAY, **kw)])]


def stage(e: InMemoryEngine, customer: str = "user-1") -> Stage | None:
    found = e.customer(customer)
    return found.stage if found else None


def health(e: InMemoryEngine, customer: str = "user-1") -> Health:
    found = e.customer(customer)
    assert found is not None
    return found.health


def test_the_first_touchpoint_makes_discovery() -> None:
    e = engine()
    (change,) = send(e, "Ad Impression")
    assert change == StageMove(None, Stage.DISCOVERY, (), "first_touchpoint", change.message_id, T0)


@pytest.mark.parametrize(
    "event", ["Signed Up", "Account Created", "Newsletter Subscribed", "Trial Started", "Webinar Attended"]
)
def test_a_sign_up_kind_of_event_makes_engagement(event: str) -> None:
    e = engine()
    changes = send(e, event)
    assert [c.to_stage for c in changes] == [Stage.DISCOVERY, Stage.ENGAGEMENT]
    assert changes[1].rule == "engagement.signed_up"


def test_three_engagement_touchpoints_within_30_days_make_engagement() -> None:
    e = engine()
    send(e, "Product Viewed", 0)
    send(e, "Email Opened", 20)
    assert stage(e) is Stage.DISCOVERY
    send(e, "Social Liked", 31)  # days 0, 20, 31: no three within 30 days
    assert stage(e) is Stage.DISCOVERY
    send(e, "Content Viewed", 40)  # days 20, 31, 40
    assert stage(e) is Stage.ENGAGEMENT


def test_a_late_engagement_touchpoint_counts_where_it_belongs() -> None:
    e = engine()
    send(e, "Product Viewed", 0)
    send(e, "Email Opened", 100)
    send(e, "Social Liked", 90)
    assert stage(e) is Stage.DISCOVERY
    send(e, "Cart Viewed", 95)  # late, but 90, 95, 100 lie within 30 days
    assert stage(e) is Stage.ENGAGEMENT


@pytest.mark.parametrize(
    ("event", "props"), [("Order Completed", {"revenue": 10}), ("Subscription Started", {}), ("Trial Converted", {})]
)
def test_conversion_from_discovery_skips_engagement(event: str, props: dict[str, Any]) -> None:
    e = engine()
    send(e, "Ad Impression")
    (change,) = send(e, event, 1, **props)
    assert (change.from_stage, change.to_stage, change.skipped) == (
        Stage.DISCOVERY,
        Stage.CONVERSION,
        (Stage.ENGAGEMENT,),
    )


def test_an_order_without_revenue_does_not_convert_and_total_counts_as_revenue() -> None:
    e = engine()
    send(e, "Order Completed", 0, revenue=0)
    assert stage(e) is Stage.DISCOVERY
    send(e, "Order Completed", 1, total=25)
    assert stage(e) is Stage.CONVERSION


def test_a_first_paid_order_from_nothing_is_discovery_then_conversion() -> None:
    e = engine()
    changes = send(e, "Order Completed", revenue=10)
    assert [(c.from_stage, c.to_stage) for c in changes] == [
        (None, Stage.DISCOVERY),
        (Stage.DISCOVERY, Stage.CONVERSION),
    ]


def test_retention_by_second_paid_order_or_renewal() -> None:
    e = engine()
    send(e, "Order Completed", 0, revenue=10)
    send(e, "Order Completed", 200, revenue=10)
    assert stage(e) is Stage.RETENTION
    e = engine()
    send(e, "Subscription Started")
    (change,) = send(e, "Subscription Renewed", 30)
    assert (change.to_stage, change.rule) == (Stage.RETENTION, "retention.renewed")


def test_loyalty_by_four_orders_in_a_year_revenue_or_program() -> None:
    e = engine()
    for day in (0, 100, 200):
        send(e, "Order Completed", day, revenue=10)
    assert stage(e) is Stage.RETENTION
    send(e, "Order Completed", 400, revenue=10)  # 100, 200, 400 and 0: no four within 365 days
    assert stage(e) is Stage.RETENTION
    send(e, "Order Completed", 300, revenue=10)  # 100, 200, 300, 400
    assert stage(e) is Stage.LOYALTY

    e = engine()
    send(e, "Order Completed", 0, revenue=300)
    changes = send(e, "Order Completed", 1, revenue=200)
    assert [(c.to_stage, c.skipped, c.rule) for c in changes] == [
        (Stage.LOYALTY, (Stage.RETENTION,), "loyalty.lifetime_revenue_500")
    ]

    e = engine()
    send(e, "Order Completed", 0, revenue=1)
    send(e, "Order Completed", 1, revenue=1)
    send(e, "Loyalty Program Joined", 2)
    assert stage(e) is Stage.LOYALTY


def test_advocacy_needs_retention_first_but_an_early_signal_counts_later() -> None:
    e = engine()
    send(e, "Order Completed", 0, revenue=10)
    send(e, "NPS Survey Answered", 1, score=10)
    assert stage(e) is Stage.CONVERSION  # a first-time buyer is not an advocate yet
    changes = send(e, "Order Completed", 2, revenue=10)
    assert [(c.from_stage, c.to_stage, c.skipped) for c in changes] == [
        (Stage.CONVERSION, Stage.ADVOCACY, (Stage.RETENTION, Stage.LOYALTY))
    ]


@pytest.mark.parametrize(
    ("event", "props", "advocate"),
    [
        ("Referral Sent", {}, True),
        ("Referral Converted", {}, True),
        ("Affiliate Sale", {"revenue": 5}, True),
        ("Review Submitted", {"rating": 4}, True),
        ("Review Submitted", {"rating": 3}, False),
        ("NPS Survey Answered", {"score": 9}, True),
        ("NPS Survey Answered", {"score": 8}, False),
    ],
)
def test_advocacy_signals(event: str, props: dict[str, Any], advocate: bool) -> None:
    e = engine()
    send(e, "Subscription Started")
    send(e, "Subscription Renewed", 1)
    send(e, event, 2, **props)
    assert (stage(e) is Stage.ADVOCACY) is advocate


def test_stages_never_move_back_and_health_waits_for_conversion() -> None:
    e = engine()
    send(e, "Signed Up")
    assert e.advance_clock(T0 + 400 * DAY) == []
    assert health(e) is Health.ACTIVE


def converted(day: float = 0) -> InMemoryEngine:
    e = engine()
    send(e, "Order Completed", day, revenue=10)
    return e


def test_inactivity_makes_at_risk_at_60_days_and_churned_at_120() -> None:
    e = converted()
    assert e.advance_clock(T0 + 59 * DAY) == []
    (risk,) = [x.change for x in e.advance_clock(T0 + 60 * DAY)]
    assert risk == HealthMove(Health.ACTIVE, Health.AT_RISK, "inactive", None, T0 + 60 * DAY)
    (churn,) = [x.change for x in e.advance_clock(T0 + 130 * DAY)]
    assert churn == HealthMove(Health.AT_RISK, Health.CHURNED, "inactive", None, T0 + 120 * DAY)


def test_activity_while_at_risk_makes_active_again() -> None:
    e = converted()
    e.advance_clock(T0 + 70 * DAY)
    (change,) = send(e, "Email Opened", 71)
    assert (change.from_health, change.to_health, change.rule) == (
        Health.AT_RISK,
        Health.ACTIVE,
        "activity_while_at_risk",
    )


def test_reactivation_and_the_second_order_after_it() -> None:
    e = converted()
    e.advance_clock(T0 + 121 * DAY)
    assert health(e) is Health.CHURNED
    changes = send(e, "Order Completed", 150, revenue=10)
    assert [c.to_health for c in changes if isinstance(c, HealthMove)] == [Health.REACTIVATED]
    send(e, "Email Opened", 151)
    assert health(e) is Health.REACTIVATED  # engagement alone does not end a reactivation
    send(e, "Order Completed", 152, revenue=10)
    assert health(e) is Health.ACTIVE


def test_subscription_cancelled_churns_at_once() -> None:
    e = engine()
    send(e, "Subscription Started")
    (change,) = send(e, "Subscription Cancelled", 3)
    assert (change.to_health, change.rule) == (Health.CHURNED, "churn_event")


def test_a_newer_event_notices_inactivity_the_clock_has_not_seen_yet() -> None:
    # Replay of old events: no timer fired in between, but the history is the one a live run had.
    e = converted()
    changes = send(e, "Order Completed", 200, revenue=10)
    health_moves = [(c.to_health, c.event_time) for c in changes if isinstance(c, HealthMove)]
    assert health_moves == [
        (Health.AT_RISK, T0 + 60 * DAY),
        (Health.CHURNED, T0 + 120 * DAY),
        (Health.REACTIVATED, T0 + 200 * DAY),
    ]


def test_a_late_event_does_not_move_health() -> None:
    e = converted()
    send(e, "Email Opened", 10)
    e.advance_clock(T0 + 75 * DAY)
    assert health(e) is Health.AT_RISK
    send(e, "Email Opened", 5)  # older than the latest activity
    assert health(e) is Health.AT_RISK


def test_the_same_message_id_twice_changes_nothing() -> None:
    e = engine()
    tp = touchpoint("Order Completed", revenue=10)
    first = e.process([tp])
    assert e.process([tp]) == []
    assert len(first) == 2 and e.customer("user-1").signal_counts["paid_order"] == 1  # type: ignore[union-attr]


def test_alias_merges_the_anonymous_profile_into_the_known_one() -> None:
    e = engine()
    send(e, "Product Viewed", 0, customer="anon-1")
    send(e, "Order Completed", 1, customer="anon-1", revenue=400)
    send(e, "Order Completed", 2, customer="user-9", revenue=150)
    emitted = e.process([touchpoint(None, customer="user-9", call_type="alias", previous_id="anon-1", at=T0 + 3 * DAY)])
    merged = e.customer("user-9")
    assert merged is not None and e.customer("anon-1") is merged
    assert merged.signal_counts["paid_order"] == 2
    assert merged.signal_revenue["paid_order"] == 550
    assert merged.stage is Stage.LOYALTY  # two paid orders and 550 in revenue, once added up
    assert [x.customer_id for x in emitted] == ["user-9", "user-9"]
    assert "anon-1" not in e.customers
    # Later anonymous events land on the known customer.
    send(e, "Email Opened", 4, customer="anon-1")
    assert e.customers["user-9"].signal_counts["engagement_touch"] == 2  # the anonymous view, then this


def test_identify_with_both_ids_merges_and_traits_attach() -> None:
    e = engine()
    send(e, "Signed Up", 0, customer="anon-2")
    e.process(
        [
            touchpoint(
                None,
                customer="user-2",
                call_type="identify",
                anonymous_id="anon-2",
                traits={"email": "b@example.com"},
                at=T0 + DAY,
            )
        ]
    )
    merged = e.customer("anon-2")
    assert merged is not None and merged.customer_id == "user-2"
    assert merged.stage is Stage.ENGAGEMENT and merged.traits == {"email": "b@example.com"}


def test_sequences_and_event_ids_are_per_customer_and_deterministic() -> None:
    a, b = engine(), engine()
    events = [touchpoint("Order Completed", revenue=10, message_id="m1"), touchpoint("Signed Up", message_id="m2")]
    first, second = a.process(events), b.process(events)
    assert [x.sequence for x in first] == [1, 2]
    assert [x.event_id for x in first] == [x.event_id for x in second]


def test_identify_does_not_merge_two_known_customers_sharing_a_device() -> None:
    e = engine()
    e.process([touchpoint(None, customer="u-1", call_type="identify", anonymous_id="anon-d")])
    send(e, "Order Completed", 1, customer="u-1", revenue=10)
    e.process([touchpoint(None, customer="u-2", call_type="identify", anonymous_id="anon-d", at=T0 + 2 * DAY)])
    assert "u-1" in e.customers  # u-1 keeps its profile
    assert e.customers["u-1"].stage is Stage.CONVERSION
    assert e.identities["anon-d"] == "u-2"  # the device now belongs to u-2


def test_a_merge_is_one_stage_change_even_when_the_rules_climb_further() -> None:
    e = engine()
    for day in (0, 1):
        send(e, "Order Completed", day, customer="anon-m", revenue=10)  # anon-m: retention
    send(e, "NPS Survey Answered", 2, customer="u-m", score=10)  # u-m: discovery, a promoter
    emitted = e.process([touchpoint(None, customer="u-m", call_type="alias", previous_id="anon-m", at=T0 + 3 * DAY)])
    stage_moves = [x.change for x in emitted if isinstance(x.change, StageMove)]
    assert [(m.from_stage, m.to_stage) for m in stage_moves] == [(Stage.DISCOVERY, Stage.ADVOCACY)]


def test_a_late_cancellation_does_not_churn() -> None:
    e = converted()
    send(e, "Order Completed", 200, revenue=10)
    send(e, "Subscription Cancelled", 100)  # older than the latest order
    assert health(e) is not Health.CHURNED
