"""What one touchpoint or lifecycle event means for the metrics."""

from __future__ import annotations

from datetime import UTC, datetime

from clm_shared.cloudevents import Envelope
from clm_shared.schemas.lifecycle import Stage
from metrics.facts import Erasure, Merge, StageReached, lifecycle_fact, touchpoint_facts
from tests.utils.factories import touchpoint

T = datetime(2026, 1, 5, 23, 30, tzinfo=UTC)


def test_counters_of_touchpoints() -> None:
    assert touchpoint_facts(touchpoint("Home", call_type="page", customer="u"), "u").counters == {"page_views": 1}
    impressions = touchpoint("Social Impression", customer="u", impressions=40)
    assert touchpoint_facts(impressions, "u").counters == {"social_impressions": 40}
    assert touchpoint_facts(touchpoint("Social Impression", customer="u"), "u").counters == {"social_impressions": 1}
    order = touchpoint("Order Completed", customer="u", total=80)
    facts = touchpoint_facts(order, "u")
    assert facts.counters == {"orders": 1, "order_revenue": 80}
    assert facts.key_event is not None and facts.key_event.revenue == 80
    csat = touchpoint_facts(touchpoint("CSAT Survey Answered", customer="u", score=4), "u")
    assert csat.counters == {"csat_answers": 1, "csat_good": 1}
    assert touchpoint_facts(touchpoint("Mystery Event", customer="u"), "u").counters == {}


def test_the_day_is_the_event_time_in_utc_and_the_source_is_the_campaign_source() -> None:
    tp = touchpoint("Home", call_type="page", customer="u", at=T)
    assert touchpoint_facts(tp, "u").day.isoformat() == "2026-01-05"
    with_source = tp.model_copy(update={"context": {"campaign": {"source": "google"}}})
    assert touchpoint_facts(with_source, "u").source == "google"


def test_an_nps_answer_without_a_score_is_no_answer() -> None:
    assert touchpoint_facts(touchpoint("NPS Survey Answered", customer="u"), "u").key_event is None
    answered = touchpoint_facts(touchpoint("NPS Survey Answered", customer="u", score=9), "u").key_event
    assert answered is not None and answered.score == 9


def envelope(type_: str, data: dict[str, object]) -> Envelope:
    return Envelope("id-1", type_, "urn:clm:stage-engine", "c1", T, 1, data)


def test_a_stage_change_reaches_every_stage_up_to_it() -> None:
    fact = lifecycle_fact(
        envelope("clm.stage.changed", {"to_stage": "retention", "event_time": "2026-01-04T00:00:00Z"})
    )
    assert fact == StageReached(
        "c1", (Stage.DISCOVERY, Stage.ENGAGEMENT, Stage.CONVERSION, Stage.RETENTION), datetime(2026, 1, 4, tzinfo=UTC)
    )


def test_merges_and_erasures() -> None:
    assert lifecycle_fact(envelope("clm.customer.merged", {"merged_id": "anon-1"})) == Merge("anon-1", "c1")
    assert lifecycle_fact(envelope("clm.customer.erased", {})) == Erasure("c1")
