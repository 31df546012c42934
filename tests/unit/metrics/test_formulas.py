"""The metric math without I/O: each formula, its empty-denominator case, and timelines."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from metrics import formulas
from metrics.formulas import Timeline, Window

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def test_ratios_are_fractions_and_an_empty_denominator_is_none() -> None:
    assert formulas.ratio(1, 4) == 0.25
    assert formulas.ratio(0, 4) == 0
    assert formulas.ratio(0, 0) is None


def test_nps_is_promoters_minus_detractors_over_respondents() -> None:
    assert formulas.nps(promoters=3, detractors=1, respondents=8) == 25
    assert formulas.nps(0, 2, 2) == -100
    assert formulas.nps(0, 0, 0) is None


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
def test_nps_stays_between_minus_and_plus_100(promoters: int, detractors: int, passives: int) -> None:
    value = formulas.nps(promoters, detractors, promoters + detractors + passives)
    assert value is None or -100 <= value <= 100


def test_counts_before_an_instant_exclude_the_instant_itself() -> None:
    assert formulas.counts_before([day(1), day(2), day(2)], [day(0), day(2), day(3)]) == [0, 1, 3]


def test_a_timeline_is_active_from_conversion_until_churned_and_again_after_reactivation() -> None:
    timeline = Timeline(day(1), [(day(5), "churned"), (day(9), "reactivated")])
    assert timeline.spans() == [(day(1), day(5)), (day(9), None)]
    # What happened strictly before the instant counts: at day 5 the churn has not happened yet.
    assert [timeline.active_at(day(n)) for n in (1, 2, 5, 6, 9, 10)] == [False, True, True, False, False, True]


def test_health_before_conversion_only_matters_once_converted() -> None:
    timeline = Timeline(day(3), [(day(1), "at_risk"), (day(2), "active")])
    assert timeline.spans() == [(day(3), None)]
    churned_first = Timeline(day(3), [(day(1), "churned")])
    assert churned_first.spans() == []


def test_churn_rate_counts_only_the_customers_the_window_started_with() -> None:
    timelines = {
        "kept": Timeline(day(-10)),
        "lost": Timeline(day(-10), [(day(3), "churned")]),
        "new_and_lost": Timeline(day(2), [(day(4), "churned")]),  # not in the denominator
    }
    churns = [("lost", day(3)), ("new_and_lost", day(4))]
    assert formulas.churn_rates(timelines, churns, [Window(day(0), day(10))]) == [0.5]
    assert formulas.churn_rates({}, [], [Window(day(0), day(10))]) == [None]


def test_retention_rate_is_end_minus_new_over_start() -> None:
    timelines = {
        "kept": Timeline(day(-10)),
        "lost": Timeline(day(-10), [(day(3), "churned")]),
        "new": Timeline(day(2)),
    }
    # S = 2 (kept, lost); E = 2 (kept, new); N = 1 (new) -> (2 - 1) / 2.
    assert formulas.retention_rates(timelines, [Window(day(0), day(10))]) == [0.5]
    assert formulas.retention_rates({"new": Timeline(day(2))}, [Window(day(0), day(10))]) == [None]


def test_repeat_purchase_rate_is_lifetime_as_of_each_instant() -> None:
    orders = {"a": [day(1), day(5)], "b": [day(2)], "c": [day(20)]}
    assert formulas.repeat_purchase_rates(orders, [day(0), day(3), day(6)]) == [None, 0.0, 0.5]


def test_historical_clv_is_mean_lifetime_revenue_of_converted_customers() -> None:
    orders = {"a": [(day(1), 100.0), (day(5), 50.0)], "b": [(day(2), 30.0)], "late": [(day(9), 999.0)]}
    converted = {"a": day(1), "b": day(2), "trial": day(3), "late": day(9)}
    # At day 6: a 150, b 30, trial 0 -> 180 / 3; "late" converts afterwards.
    assert formulas.clv_historical(orders, converted, day(6)) == 60
    assert formulas.clv_historical(orders, converted, day(0)) is None


def test_top_share_takes_the_top_fifth_of_customers_by_revenue() -> None:
    assert formulas.top_share([100, 50, 25, 15, 10]) == 0.5
    assert formulas.top_share([10]) == 1.0
    assert formulas.top_share([]) is None
    assert formulas.top_share([0, 0]) is None


def test_median_days_between_stages() -> None:
    assert formulas.median_days([(day(0), day(2)), (day(0), day(4)), (day(1), day(11))]) == 4
    assert formulas.median_days([]) is None


def test_cohorts_by_month_of_first_order() -> None:
    orders = {
        "a": [date(2026, 1, 5), date(2026, 2, 1)],
        "b": [date(2026, 1, 20), date(2026, 3, 3)],
        "c": [date(2026, 2, 10)],
        "before": [date(2025, 12, 1), date(2026, 1, 2)],
    }
    assert formulas.cohort_retention(orders, date(2026, 1, 1), date(2026, 3, 31)) == [
        ("2026-01", 2, [1.0, 0.5, 0.5]),
        ("2026-02", 1, [1.0, 0.0]),
    ]
    assert formulas.cohort_retention({}, date(2026, 1, 1), date(2026, 3, 31)) == []


@given(st.lists(st.tuples(st.integers(0, 100), st.sampled_from(["churned", "active", "at_risk", "reactivated"]))))
def test_active_counts_agree_with_each_timeline(moves: list[tuple[int, str]]) -> None:
    timelines = [Timeline(day(10), [(day(n), h) for n, h in sorted(moves)])]
    instants = [day(n) for n in range(0, 110, 7)]
    assert formulas.active_counts(timelines, instants) == [int(timelines[0].active_at(i)) for i in instants]


def test_back_to_back_buckets_form_one_run_and_the_whole_window_its_own() -> None:
    from metrics.queries import _contiguous_runs, day_windows, midnight

    buckets = day_windows(date(2026, 1, 1), date(2026, 3, 1), "month")
    whole = Window(midnight(date(2026, 1, 1)), midnight(date(2026, 3, 1)))
    windows = [*buckets, whole]
    assert _contiguous_runs(windows, range(len(windows))) == [[0, 1], [2]]
