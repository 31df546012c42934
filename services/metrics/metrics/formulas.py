"""The metric math, pure: counts and timelines in, values out (``docs/metrics.md`` has the definitions).

Windows are ``[start, end)``; the state "as of" an instant counts what happened strictly before it.
Ratios are fractions (``nps`` is -100..100); an empty denominator gives None, never 0.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

CHURNED = "churned"


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def nps(promoters: int, detractors: int, respondents: int) -> float | None:
    """100 x (promoters - detractors) / respondents."""
    share = ratio(promoters - detractors, respondents)
    return None if share is None else 100 * share


def counts_before(times: Iterable[datetime], instants: Sequence[datetime]) -> list[int]:
    """For each instant, how many of ``times`` are strictly before it."""
    ordered = sorted(times)
    return [bisect.bisect_left(ordered, instant) for instant in instants]


@dataclass(frozen=True)
class Timeline:
    """One converted customer: when they converted and their health moves, sorted by time."""

    converted_at: datetime
    health: Sequence[tuple[datetime, str]] = ()

    def spans(self) -> list[tuple[datetime, datetime | None]]:
        """The spans ``(start, end)`` in which the customer is converted and not churned (end None: still)."""
        events = sorted([(self.converted_at, "", True), *((at, h, False) for at, h in self.health)])
        spans: list[tuple[datetime, datetime | None]] = []
        converted = churned = False
        start: datetime | None = None
        for at, health, is_conversion in events:
            if is_conversion:
                converted = True
            else:
                churned = health == CHURNED
            inside = converted and not churned
            if inside and start is None:
                start = at
            elif not inside and start is not None:
                spans.append((start, at))
                start = None
        if start is not None:
            spans.append((start, None))
        return spans

    def active_at(self, instant: datetime) -> bool:
        """Converted and not churned, by what happened before ``instant``."""
        return any(start < instant and (end is None or instant <= end) for start, end in self.spans())


def active_counts(timelines: Iterable[Timeline], instants: Sequence[datetime]) -> list[int]:
    """Converted, not-churned customers as of each instant."""
    starts: list[datetime] = []
    ends: list[datetime] = []
    for timeline in timelines:
        for start, end in timeline.spans():
            starts.append(start)
            if end is not None:
                ends.append(end)
    entered = counts_before(starts, instants)
    left = counts_before(ends, instants)
    return [a - b for a, b in zip(entered, left, strict=True)]


def churn_rates(
    timelines: Mapping[str, Timeline], churn_times: Iterable[tuple[str, datetime]], windows: Sequence[Window]
) -> list[float | None]:
    """Of the converted, not-churned customers at the window's start, the share whose health became churned in it.

    Counting only the customers of the denominator keeps the rate a fraction: a customer who
    converted and churned within the window is not one the window started with.
    """
    at_start = active_counts(timelines.values(), [w.start for w in windows])
    churns = sorted(churn_times, key=lambda item: item[1])
    times = [at for _, at in churns]
    values = []
    for window, base in zip(windows, at_start, strict=True):
        lo, hi = bisect.bisect_left(times, window.start), bisect.bisect_left(times, window.end)
        lost = {cid for cid, _ in churns[lo:hi] if cid in timelines and timelines[cid].active_at(window.start)}
        values.append(ratio(len(lost), base))
    return values


def retention_rates(timelines: Mapping[str, Timeline], windows: Sequence[Window]) -> list[float | None]:
    """(E - N) / S: S and E converted, not-churned at start and end; N those of E who converted in the window."""
    starts = active_counts(timelines.values(), [w.start for w in windows])
    ends = active_counts(timelines.values(), [w.end for w in windows])
    by_conversion = sorted(timelines.values(), key=lambda t: t.converted_at)
    conversion_times = [t.converted_at for t in by_conversion]
    values = []
    for window, s, e in zip(windows, starts, ends, strict=True):
        lo = bisect.bisect_left(conversion_times, window.start)
        hi = bisect.bisect_left(conversion_times, window.end)
        new = sum(1 for t in by_conversion[lo:hi] if t.active_at(window.end))
        values.append(ratio(e - new, s))
    return values


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


def repeat_purchase_rates(orders: Mapping[str, Sequence[datetime]], instants: Sequence[datetime]) -> list[float | None]:
    """Customers with at least two orders / customers with at least one, lifetime as of each instant."""
    firsts, seconds = [], []
    for times in orders.values():
        ordered = sorted(times)
        if ordered:
            firsts.append(ordered[0])
        if len(ordered) > 1:
            seconds.append(ordered[1])
    one = counts_before(firsts, instants)
    two = counts_before(seconds, instants)
    return [ratio(b, a) for a, b in zip(one, two, strict=True)]


def clv_historical(
    orders: Mapping[str, Sequence[tuple[datetime, float]]], converted_at: Mapping[str, datetime], instant: datetime
) -> float | None:
    """Mean lifetime revenue (orders before the instant) of the customers converted before it."""
    converted = [cid for cid, at in converted_at.items() if at < instant]
    revenue = sum(r for cid in converted for at, r in orders.get(cid, ()) if at < instant)
    return ratio(revenue, len(converted))


def lifetime_revenue(orders: Mapping[str, Sequence[tuple[datetime, float]]], instant: datetime) -> dict[str, float]:
    """Revenue per customer from orders before the instant (customers with at least one such order)."""
    totals: dict[str, float] = {}
    for cid, items in orders.items():
        before = [r for at, r in items if at < instant]
        if before:
            totals[cid] = sum(before)
    return totals


def top_share(revenues: Iterable[float], share: float = 0.2) -> float | None:
    """Revenue share of the top ``share`` of customers by lifetime revenue (at least one customer)."""
    ordered = sorted(revenues, reverse=True)
    total = sum(ordered)
    if not ordered or total <= 0:
        return None
    top = max(1, round(len(ordered) * share))
    return sum(ordered[:top]) / total


def median_days(pairs: Iterable[tuple[datetime, datetime]]) -> float | None:
    """Median of (later - earlier) in days."""
    days = [(later - earlier).total_seconds() / 86400 for earlier, later in pairs]
    return statistics.median(days) if days else None


def month_index(day: date) -> int:
    return day.year * 12 + day.month - 1


def cohort_retention(
    order_days: Mapping[str, Iterable[date]], first: date, last: date
) -> list[tuple[str, int, list[float]]]:
    """Cohorts by month of first order (first..last months); share of each with an order k months later.

    ``retention[0]`` is the cohort month itself (1.0); later offsets run up to ``last``'s month.
    """
    months: dict[str, set[int]] = {cid: {month_index(d) for d in days} for cid, days in order_days.items()}
    cohorts: dict[int, list[set[int]]] = {}
    for ordered in months.values():
        if ordered:
            cohorts.setdefault(min(ordered), []).append(ordered)
    result = []
    end = month_index(last)
    for cohort in range(month_index(first), end + 1):
        members = cohorts.get(cohort, [])
        if not members:
            continue
        shares = [sum(1 for m in members if cohort + k in m) / len(members) for k in range(end - cohort + 1)]
        result.append((f"{cohort // 12:04d}-{cohort % 12 + 1:02d}", len(members), shares))
    return result
