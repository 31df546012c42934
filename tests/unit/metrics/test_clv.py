from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from metrics.clv import (
    MIN_CUSTOMERS,
    MIN_REPEAT_BUYERS,
    Bucket,
    ClvFit,
    InsufficientData,
    Rfm,
    fit_clv,
    histogram,
    summarize,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
Orders = dict[str, list[tuple[datetime, float]]]


@dataclass(frozen=True)
class Population:
    """BG/NBD (rates per day) and Gamma-Gamma parameters of a simulated customer base."""

    r: float = 0.5
    alpha: float = 20.0  # mean purchase rate r / alpha = one purchase every 40 days
    a: float = 0.8
    b: float = 2.5  # mean dropout probability after a purchase a / (a + b) ≈ 0.24
    p: float = 6.0
    q: float = 4.0
    v: float = 15.0  # mean spend p * v / (q - 1) = 30


def simulate(population: Population, customers: int, *, seed: int, horizon_days: int = 365) -> tuple[Orders, float]:
    """Order histories up to NOW and the mean revenue each customer then really brings in over the horizon."""
    rng = np.random.default_rng(seed)
    orders: Orders = {}
    future_revenue = 0.0
    for i in range(customers):
        rate = rng.gamma(population.r, 1 / population.alpha)
        dropout = rng.beta(population.a, population.b)
        spend_scale = 1 / rng.gamma(population.q, 1 / population.v)
        age = rng.uniform(30.0, 730.0)  # days from the first order to NOW
        first = NOW - timedelta(days=age)
        history = [(first, float(rng.gamma(population.p, spend_scale)))]
        t = 0.0
        while True:  # BG/NBD: exponential gaps while alive; a customer may leave after each repeat purchase
            t += rng.exponential(1 / rate)
            if t > age + horizon_days:
                break
            revenue = float(rng.gamma(population.p, spend_scale))
            if t <= age:
                history.append((first + timedelta(days=t), revenue))
            else:
                future_revenue += revenue
            if rng.random() < dropout:
                break
        orders[f"c{i}"] = history
    return orders, future_revenue / customers


@dataclass(frozen=True)
class Simulated:
    orders: Orders
    future_revenue: float  # the mean over customers
    fit: ClvFit


@pytest.fixture(scope="module")
def simulated() -> Simulated:
    orders, future_revenue = simulate(Population(), 3000, seed=7)
    fit = fit_clv(orders, now=NOW)
    assert isinstance(fit, ClvFit), fit
    return Simulated(orders, future_revenue, fit)


def test_the_fit_recovers_the_simulated_parameters_roughly(simulated: Simulated) -> None:
    truth = Population()
    got = simulated.fit.parameters
    # a and b are weakly identified one by one; their mean, the dropout probability, is what drives predictions.
    assert got["a"] / (got["a"] + got["b"]) == pytest.approx(truth.a / (truth.a + truth.b), rel=0.25)
    assert got["r"] / got["alpha"] == pytest.approx(truth.r / truth.alpha, rel=0.25)
    assert got["r"] == pytest.approx(truth.r, rel=0.35)
    for name in ("p", "q", "v"):
        assert got[name] == pytest.approx(getattr(truth, name), rel=0.35), name
    mean_spend = got["p"] * got["v"] / (got["q"] - 1)
    assert mean_spend == pytest.approx(truth.p * truth.v / (truth.q - 1), rel=0.1)


def test_the_mean_12_month_prediction_is_within_15_percent_of_the_simulated_revenue(simulated: Simulated) -> None:
    fit = simulated.fit
    assert fit.horizon_days == 365
    assert fit.observed_until == NOW
    assert fit.mean_predicted == pytest.approx(simulated.future_revenue, rel=0.15)
    assert fit.mean_predicted == pytest.approx(sum(fit.predictions.values()) / len(fit.predictions))
    assert fit.customers == len(fit.predictions) == 3000
    assert MIN_REPEAT_BUYERS <= fit.repeat_buyers < fit.customers
    assert fit.fit_seconds > 0


def test_customers_with_a_single_order_get_a_positive_prediction(simulated: Simulated) -> None:
    fit, orders = simulated.fit, simulated.orders
    single = [c for c, history in orders.items() if len(history) == 1]
    assert len(single) > 100
    assert all(fit.predictions[c] > 0 for c in single)
    # A single order says little about a customer's rate; repeat buyers are worth more on average.
    repeat = [c for c, history in orders.items() if len(history) > 1]
    mean_single = sum(fit.predictions[c] for c in single) / len(single)
    assert mean_single < sum(fit.predictions[c] for c in repeat) / len(repeat)


def test_the_fit_is_deterministic_whatever_the_order_of_the_customers(simulated: Simulated) -> None:
    again = fit_clv(dict(reversed(list(simulated.orders.items()))), now=NOW)
    assert isinstance(again, ClvFit)
    assert again.parameters == simulated.fit.parameters
    assert again.predictions == simulated.fit.predictions


def test_too_few_customers_is_insufficient_data_with_a_reason() -> None:
    orders, _ = simulate(Population(), MIN_CUSTOMERS - 1, seed=3)
    result = fit_clv(orders, now=NOW)
    assert isinstance(result, InsufficientData)
    assert f"{MIN_CUSTOMERS - 1} customers" in result.reason


def test_too_few_repeat_buyers_is_insufficient_data_with_a_reason() -> None:
    orders = {f"c{i}": [(NOW - timedelta(days=i % 300 + 1), 20.0)] for i in range(500)}
    for i in range(MIN_REPEAT_BUYERS - 1):
        orders[f"c{i}"].append((NOW - timedelta(hours=1), 30.0))
    result = fit_clv(orders, now=NOW)
    assert isinstance(result, InsufficientData)
    assert f"{MIN_REPEAT_BUYERS - 1} customers with a repeat purchase" in result.reason


def test_a_fit_that_runs_off_to_infinity_is_insufficient_data_not_a_number() -> None:
    # Everyone buys every 10 days and never leaves: no spread in purchase rates for BG/NBD to estimate.
    orders = {
        f"c{i}": [(NOW - timedelta(days=100 - 10 * k + i % 7), 25.0 + (i * k) % 5) for k in range(10)]
        for i in range(MIN_CUSTOMERS)
    }
    result = fit_clv(orders, now=NOW)
    assert isinstance(result, InsufficientData)
    assert result.reason.startswith("the fit did not converge: r = ")


def test_customers_without_orders_up_to_now_are_not_counted() -> None:
    orders: Orders = {"later": [(NOW + timedelta(days=1), 5.0)], "none": []}
    result = fit_clv(orders, now=NOW)
    assert result == InsufficientData(f"0 customers with orders; a fit needs at least {MIN_CUSTOMERS}")


def test_summary_counts_repeat_purchase_days_in_utc() -> None:
    day = timedelta(days=1)
    orders = [
        (NOW - 10 * day, 5.0),
        (NOW - 10 * day + timedelta(hours=1), 5.0),  # same day as the first: one purchase of 10
        (NOW - 4 * day, 20.0),
        (NOW - 2 * day, 40.0),
        (NOW + day, 99.0),  # after the observation end
    ]
    assert summarize(orders, now=NOW) == Rfm(frequency=2, recency=8, age=10, monetary_value=30.0)
    assert summarize([(NOW, 3.0)], now=NOW) == Rfm(frequency=0, recency=0, age=0, monetary_value=0.0)
    assert summarize([], now=NOW) is None


@pytest.mark.parametrize("revenue", [0.0, -1.0, math.nan])
def test_a_non_positive_revenue_is_refused(revenue: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        summarize([(NOW, revenue)], now=NOW)


def test_histogram_has_equal_width_buckets_that_cover_every_value() -> None:
    buckets = histogram([0.0, 1.0, 2.5, 5.0, 9.9, 10.0], buckets=4)
    assert buckets == [
        Bucket(lower=0.0, upper=2.5, customers=2),
        Bucket(lower=2.5, upper=5.0, customers=1),
        Bucket(lower=5.0, upper=7.5, customers=1),
        Bucket(lower=7.5, upper=10.0, customers=2),
    ]


def test_histogram_of_nothing_or_of_one_value() -> None:
    assert histogram([]) == []
    assert histogram([3.0, 3.0]) == [Bucket(lower=3.0, upper=3.0, customers=2)]
    with pytest.raises(ValueError, match="buckets"):
        histogram([1.0], buckets=0)


def test_histogram_of_predictions_counts_every_customer(simulated: Simulated) -> None:
    fit = simulated.fit
    buckets = histogram(fit.predictions.values())
    assert len(buckets) == 10
    assert sum(b.customers for b in buckets) == fit.customers
