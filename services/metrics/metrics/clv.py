"""Predicted customer lifetime value: BG/NBD purchases times Gamma-Gamma spend, fitted by MAP (pure, no clock).

Library: pymc-marketing (`BetaGeoModel`, `GammaGammaModel`, `fit(method="map")`), with flat priors so the MAP
fit is the maximum-likelihood fit and does not depend on the time unit. Measured on a 2-core machine: a fit of
100,000 customers takes ~17 s in a fresh process, so it stays the choice; its ~3 s import happens inside `fit_clv`
only. Each fit compiles a few small C modules with g++ into pytensor's cache (~/.pytensor, or PYTENSOR_FLAGS
base_compiledir), which deletes those unused for 31 days: run refits in a worker process, not on the event loop.
Time unit: days. Orders are grouped per UTC calendar day, as pymc-marketing's `rfm_summary` does, so several
orders on one day are one purchase (their revenue summed).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

# Below these the fit is refused rather than trusted: BG/NBD estimates four parameters from the whole base and
# Gamma-Gamma three from repeat buyers only; with fewer, MAP fits swing wildly between refits.
MIN_CUSTOMERS = 100
MIN_REPEAT_BUYERS = 30
# A fitted parameter outside these bounds means the optimiser ran off along a flat likelihood (no convergence).
PARAMETER_BOUNDS = (1e-6, 1e6)


@dataclass(frozen=True, slots=True)
class Rfm:
    """One customer's summary in days: repeat purchase days, first to last purchase, first purchase to now."""

    frequency: int
    recency: int
    age: int
    monetary_value: float  # mean revenue of a repeat purchase day; 0.0 without repeats


@dataclass(frozen=True, slots=True)
class ClvFit:
    observed_until: datetime
    horizon_days: int
    mean_predicted: float
    predictions: dict[str, float]
    parameters: dict[str, float]  # BG/NBD r, alpha (days), a, b; Gamma-Gamma p, q, v
    customers: int
    repeat_buyers: int
    fit_seconds: float  # wall time, including the library's import on a process's first fit


@dataclass(frozen=True, slots=True)
class InsufficientData:
    reason: str


@dataclass(frozen=True, slots=True)
class Bucket:
    lower: float
    upper: float
    customers: int


def summarize(orders: Sequence[tuple[datetime, float]], *, now: datetime) -> Rfm | None:
    """The customer's RFM summary from orders up to `now` (later ones are ignored); None without any."""
    today = _utc_day(now)
    per_day: dict[date, float] = {}
    for at, revenue in orders:
        if not (math.isfinite(revenue) and revenue > 0):
            raise ValueError(f"order revenue must be a positive number, got {revenue!r}")
        day = _utc_day(at)
        if day <= today:
            per_day[day] = per_day.get(day, 0.0) + revenue
    if not per_day:
        return None
    days = sorted(per_day)
    first, last = days[0], days[-1]
    repeats = [per_day[d] for d in days[1:]]
    return Rfm(
        frequency=len(repeats),
        recency=(last - first).days,
        age=(today - first).days,
        monetary_value=sum(repeats) / len(repeats) if repeats else 0.0,
    )


def fit_clv(
    orders_by_customer: Mapping[str, Sequence[tuple[datetime, float]]],
    *,
    now: datetime,
    horizon_days: int = 365,
) -> ClvFit | InsufficientData:
    """Expected revenue per customer over the next `horizon_days`, or why the data cannot support a fit."""
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    summaries: dict[str, Rfm] = {}
    for customer in sorted(orders_by_customer):
        rfm = summarize(orders_by_customer[customer], now=now)
        if rfm is not None:
            summaries[customer] = rfm
    repeat_buyers = sum(1 for rfm in summaries.values() if rfm.frequency > 0)
    if len(summaries) < MIN_CUSTOMERS:
        return InsufficientData(f"{len(summaries)} customers with orders; a fit needs at least {MIN_CUSTOMERS}")
    if repeat_buyers < MIN_REPEAT_BUYERS:
        return InsufficientData(
            f"{repeat_buyers} customers with a repeat purchase; a fit needs at least {MIN_REPEAT_BUYERS}"
        )

    started = time.perf_counter()
    try:
        parameters, predicted = _fit_pymc_marketing(summaries, horizon_days)
    except (ArithmeticError, ValueError) as error:  # the optimiser or the library gave up on these data
        return InsufficientData(f"the fit failed: {error}")
    fit_seconds = time.perf_counter() - started

    low, high = PARAMETER_BOUNDS
    for name, value in parameters.items():
        if not (math.isfinite(value) and low <= value <= high):
            return InsufficientData(f"the fit did not converge: {name} = {value}")
    if parameters["q"] <= 1:
        return InsufficientData(f"the fit did not converge: q = {parameters['q']} leaves mean spend infinite")
    if not all(math.isfinite(value) and value >= 0 for value in predicted):
        return InsufficientData("the fit gave non-finite or negative predictions")

    predictions = dict(zip(summaries, predicted, strict=True))
    return ClvFit(
        observed_until=now,
        horizon_days=horizon_days,
        mean_predicted=math.fsum(predicted) / len(predicted),
        predictions=predictions,
        parameters=parameters,
        customers=len(summaries),
        repeat_buyers=repeat_buyers,
        fit_seconds=fit_seconds,
    )


def histogram(values: Iterable[float], buckets: int = 10) -> list[Bucket]:
    """Equal-width buckets from the lowest to the highest value; the last bucket includes its upper edge."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    data = list(values)
    if not data:
        return []
    if not all(math.isfinite(v) for v in data):
        raise ValueError("histogram values must be finite")
    lowest, highest = min(data), max(data)
    if lowest == highest:
        return [Bucket(lower=lowest, upper=highest, customers=len(data))]
    width = (highest - lowest) / buckets
    counts = [0] * buckets
    for v in data:
        counts[min(int((v - lowest) / width), buckets - 1)] += 1
    edges = [lowest + i * width for i in range(buckets)] + [highest]
    return [Bucket(lower=edges[i], upper=edges[i + 1], customers=counts[i]) for i in range(buckets)]


def _utc_day(at: datetime) -> date:
    # A naive datetime is taken to be UTC already.
    return at.astimezone(UTC).date() if at.tzinfo is not None else at.date()


def _fit_pymc_marketing(summaries: Mapping[str, Rfm], horizon_days: int) -> tuple[dict[str, float], list[float]]:
    with warnings.catch_warnings():
        # Only matrix products would use BLAS; these models are elementwise over customers.
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS installation")
        warnings.filterwarnings("ignore", module="arviz")
        import pandas as pd
        from pymc_extras.prior import Prior
        from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

        data = pd.DataFrame(
            {
                "customer_id": list(summaries),
                "frequency": [rfm.frequency for rfm in summaries.values()],
                "recency": [float(rfm.recency) for rfm in summaries.values()],
                "T": [float(rfm.age) for rfm in summaries.values()],
                "monetary_value": [rfm.monetary_value for rfm in summaries.values()],
            }
        )
        flat = {name: Prior("HalfFlat") for name in ("r", "alpha", "a", "b")}
        purchases = BetaGeoModel(model_config=flat)
        purchases.fit(data=data[["customer_id", "frequency", "recency", "T"]], method="map", progressbar=False)
        repeat = data[data["frequency"] > 0]
        spend = GammaGammaModel()  # its default priors are flat already
        spend.fit(data=repeat[["customer_id", "frequency", "monetary_value"]], method="map", progressbar=False)

        expected_purchases = purchases.expected_purchases(data, future_t=horizon_days)
        expected_spend = spend.expected_customer_spend(data)  # one-time buyers get the population mean
        predicted = (expected_purchases * expected_spend).squeeze().transpose("customer_id")

    parameters = {
        name: _scalar(model.fit_result[name])
        for model, names in ((purchases, ("r", "alpha", "a", "b")), (spend, ("p", "q", "v")))
        for name in names
    }
    # Select by label: xarray may reorder the customer coordinate when it combines the inputs.
    ordered = predicted.sel(customer_id=list(summaries)).to_numpy()
    return parameters, [float(v) for v in ordered]


def _scalar(array: Any) -> float:
    return float(array.to_numpy().reshape(-1)[0])
