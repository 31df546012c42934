"""A campaign's stats from its counters: treatment against holdout, uplift, held-back reasons."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from campaigns.stats import campaign_stats


def test_a_worked_example() -> None:
    # 1,000 entered, 100 of them held out; 90 of 900 treated converted after entry (10%), 5 of 100 held
    # out (5%); 70 orders came within the window after a send (the attributed conversions).
    stats = campaign_stats(
        {
            "entered": 1000,
            "holdout": 100,
            "sent": 1700,
            "failed": 3,
            "converted": 70,
            "treatment_converted": 90,
            "holdout_converted": 5,
            "held:capped": 12,
            "held:quiet_hours": 4,
            "held:holdout": 100,
            "held:paused": 0,
        }
    )
    assert (stats.treatment, stats.treatment_converted, stats.converted) == (900, 90, 70)
    assert stats.conversion_rate == 0.1
    assert (stats.holdout.members, stats.holdout.converted, stats.holdout.conversion_rate) == (100, 5, 0.05)
    assert stats.uplift is not None and math.isclose(stats.uplift, 0.05)
    assert stats.relative_uplift is not None and math.isclose(stats.relative_uplift, 1.0)
    assert stats.held_back == {"capped": 12, "holdout": 100, "quiet_hours": 4}
    assert (stats.sent, stats.failed, stats.exited, stats.completed) == (1700, 3, 0, 0)


def test_no_counters_means_zeros_and_no_rates() -> None:
    stats = campaign_stats({})
    assert stats.entered == stats.treatment == stats.sent == 0
    assert stats.conversion_rate is None and stats.holdout.conversion_rate is None
    assert stats.uplift is None and stats.relative_uplift is None
    assert stats.held_back == {}


def test_without_a_holdout_there_is_no_uplift_and_a_holdout_that_never_converted_has_no_relative_one() -> None:
    no_holdout = campaign_stats({"entered": 10, "treatment_converted": 2})
    assert no_holdout.conversion_rate == 0.2 and no_holdout.uplift is None
    never = campaign_stats({"entered": 20, "holdout": 10, "treatment_converted": 3, "holdout_converted": 0})
    assert never.uplift is not None and math.isclose(never.uplift, 0.3)
    assert never.relative_uplift is None


def test_all_in_the_holdout_leaves_an_empty_treatment() -> None:
    stats = campaign_stats({"entered": 5, "holdout": 5, "holdout_converted": 1})
    assert stats.treatment == 0 and stats.conversion_rate is None and stats.uplift is None


@st.composite
def consistent_counts(draw: st.DrawFn) -> dict[str, int]:
    treatment = draw(st.integers(0, 10_000))
    holdout = draw(st.integers(0, 10_000))
    return {
        "entered": treatment + holdout,
        "holdout": holdout,
        "treatment_converted": draw(st.integers(0, treatment)),
        "holdout_converted": draw(st.integers(0, holdout)),
        "sent": draw(st.integers(0, 10**6)),
    }


@given(consistent_counts())
def test_rates_are_fractions_and_uplift_exists_exactly_when_both_groups_have_members(counts: dict[str, int]) -> None:
    stats = campaign_stats(counts)
    for value in (stats.conversion_rate, stats.holdout.conversion_rate):
        assert value is None or 0 <= value <= 1
    both = stats.treatment > 0 and stats.holdout.members > 0
    assert (stats.uplift is not None) == both
    if stats.uplift is not None:
        assert -1 <= stats.uplift <= 1
        assert stats.conversion_rate is not None and stats.holdout.conversion_rate is not None
        assert math.isclose(stats.uplift, stats.conversion_rate - stats.holdout.conversion_rate)
    assert stats.treatment + stats.holdout.members == stats.entered
