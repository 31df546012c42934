"""The traffic model: reproducible, inside its window, accepted by ingest, understood by the stage rules."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clm_cli.simulation.journeys import Call, Traffic, simulate
from clm_cli.simulation.summary import summarize
from clm_cli.simulation.tunables import Tunables, load_tunables
from clm_shared.categories import Category, categorize
from clm_shared.schemas.lifecycle import Stage
from clm_shared.schemas.segment import MAX_MESSAGE_ID_LENGTH
from clm_shared.schemas.touchpoint import Touchpoint
from ingest.normalize import to_touchpoint
from ingest.requests import parse_request
from ingest.wire import decode_request
from stage_engine.memory import InMemoryEngine
from stage_engine.rules import load_rules

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
# Named in DESIGN §6 and used by the churn rule, but in no touchpoint category.
UNCATEGORIZED = {"Subscription Cancelled"}


def traffic(seed: int = 1, customers: int = 200, days: float = 60, **tunables: float) -> Traffic:
    return simulate(random.Random(seed), Tunables(**tunables), customers=customers, days=days, now=NOW)


def test_the_same_seed_gives_the_same_traffic_and_another_seed_other_traffic() -> None:
    first, again, other = traffic(seed=7), traffic(seed=7), traffic(seed=8)
    assert orjson.dumps(first.calls) == orjson.dumps(again.calls)
    assert first.calls != other.calls
    assert not {c["messageId"] for c in first.calls} & {c["messageId"] for c in other.calls}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), customers=st.integers(0, 30), days=st.floats(0.5, 400))
def test_calls_are_in_time_order_within_the_window_with_unique_ids(seed: int, customers: int, days: float) -> None:
    calls = simulate(random.Random(seed), Tunables(), customers=customers, days=days, now=NOW).calls
    times = [datetime.fromisoformat(c["timestamp"]) for c in calls]
    assert times == sorted(times)
    assert all(NOW - timedelta(days=days) <= at <= NOW for at in times)
    ids = [c["messageId"] for c in calls]
    assert len(set(ids)) == len(ids)
    assert all(len(i) <= MAX_MESSAGE_ID_LENGTH for i in ids)


def as_touchpoints(calls: list[Call]) -> list[Touchpoint]:
    """What ingest publishes for ``calls`` sent in batches of 100; any refusal raises ``Rejected``."""
    received = NOW + timedelta(seconds=1)
    touchpoints = []
    for start in range(0, len(calls), 100):
        body = orjson.dumps({"batch": calls[start : start + 100]})
        # The fast path takes it too, so a simulated run measures the path real SDK traffic takes.
        assert decode_request(body, "batch") is not None
        for call in parse_request(body, "batch").calls:  # the pydantic path, which writes the 422s
            touchpoints.append(to_touchpoint(call, received_at=received, source="sim"))
    return touchpoints


def test_every_call_is_accepted_by_both_of_ingests_validation_paths() -> None:
    calls = traffic(customers=300, days=365).calls
    touchpoints = as_touchpoints(calls)
    assert [tp.message_id for tp in touchpoints] == [c["messageId"] for c in calls]


def test_every_event_name_is_one_the_platform_categorizes() -> None:
    names = {c["event"] for c in traffic(customers=400, days=365).calls if c["type"] == "track"}
    assert {n for n in names if categorize("track", n) is Category.OTHER} <= UNCATEGORIZED
    reached = {categorize("track", n) for n in names}
    assert reached >= set(Category) - {Category.OTHER, Category.IDENTITY}


def test_a_sign_up_identifies_with_both_ids_and_later_calls_carry_the_user_id() -> None:
    for journey in traffic(customers=100).journeys:
        kinds = [c["type"] for c in journey.calls]
        if "identify" not in kinds:
            assert all("userId" not in c for c in journey.calls)
            continue
        at = kinds.index("identify")
        identify = journey.calls[at]
        assert identify["userId"] and identify["anonymousId"]
        assert all("userId" in c for c in journey.calls[at:])


def test_ad_sourced_visits_carry_the_campaign_and_orders_the_money() -> None:
    calls = traffic(customers=300).calls
    ads = [c for c in calls if c.get("event") == "Ad Impression"]
    assert ads and all(c["context"]["campaign"]["medium"] in ("cpc", "paid_social", "display") for c in ads)
    orders = [c["properties"] for c in calls if c.get("event") == "Order Completed"]
    assert orders and all(o["revenue"] > 0 and o["currency"] == "USD" and o["checkout_id"] for o in orders)
    assert all(0 <= c["properties"]["score"] <= 10 for c in calls if c.get("event") == "NPS Survey Answered")
    assert all(1 <= c["properties"]["score"] <= 5 for c in calls if c.get("event") == "CSAT Survey Answered")


def test_abandoning_every_cart_means_no_orders() -> None:
    summary = summarize(traffic(customers=300, abandon_cart=1.0))
    assert summary.count("Checkout Started") > 0
    assert summary.count("Order Completed") == 0
    assert summary.revenue == 0
    assert summary.abandoned_checkouts == summary.count("Checkout Started")


def test_probabilities_move_the_mix() -> None:
    low, high = summarize(traffic(sign_up=0.1)), summarize(traffic(sign_up=0.9))
    assert low.count("Signed Up") < high.count("Signed Up")
    assert summarize(traffic(source_ads=0, source_social=0, source_podcast=0)).count("Ad Impression") == 0
    no_followups = summarize(traffic(csat=0, nps=0, review=0, referral=0))
    assert sum(no_followups.count(e) for e in ("CSAT Survey Answered", "Review Submitted", "Referral Sent")) == 0
    loyal = summarize(traffic(repeat_purchase=1.0, abandon_cart=0))
    assert loyal.count("Order Completed") > summarize(traffic(repeat_purchase=0.0, abandon_cart=0)).count(
        "Order Completed"
    )


def test_quiet_customers_come_back_when_the_window_is_long_enough() -> None:
    summary = summarize(traffic(customers=400, days=365, win_back=1.0, repeat_purchase=0.3))
    assert summary.went_quiet > 0 and summary.came_back > 0
    # A comeback needs 125+ quiet days: none fits a 30-day window.
    assert summarize(traffic(customers=400, days=30, win_back=1.0)).came_back == 0


def test_the_default_rules_take_simulated_customers_through_every_stage() -> None:
    engine = InMemoryEngine(load_rules())
    engine.process(as_touchpoints(traffic(customers=400, days=365).calls))
    stages = Counter(c.stage for c in engine.customers.values())
    assert set(stages) == set(Stage)
    assert stages[Stage.DISCOVERY] > stages[Stage.ADVOCACY]


def test_tunables_come_from_a_file_then_from_assignments(tmp_path: Path) -> None:
    file = tmp_path / "shop.yaml"
    file.write_text("abandon_cart: 0.9\nsign_up: 0.5\n")
    tunables = load_tunables(file, ["sign_up=0.6", "currency=EUR"])
    assert (tunables.abandon_cart, tunables.sign_up, tunables.currency) == (0.9, 0.6, "EUR")
    for bad in (["abandon_cart=1.5"], ["no_such=1"], ["abandon_cart"], ["quiet_days_min=300"]):
        with pytest.raises(ValueError):
            load_tunables(None, bad)
