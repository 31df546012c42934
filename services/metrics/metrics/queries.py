"""Reads the facts back as the metrics define them: SQL where it aggregates, ``metrics.formulas`` for the rest."""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson

from clm_shared.schemas.lifecycle import STAGE_ORDER, Health
from clm_shared.transactions import Db
from metrics import formulas
from metrics.clv import ClvFit, InsufficientData, histogram
from metrics.formulas import Timeline, Window

DAILY = {
    "social_impressions",
    "page_views",
    "unique_visitors",
    "podcast_listeners",
    "social_follows",
    "social_comments",
    "social_shares",
    "social_likes",
    "podcast_downloads",
    "average_order_value",
    "affiliate_revenue",
    "csat",
    "referral_rate",
}
LIFECYCLE = {"churn_rate", "customer_retention_rate"}
ORDERS = {"repeat_purchase_rate", "clv_historical"}

Values = list[float | None]


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _source_join(alias: str, source: str | None, param: int) -> tuple[str, list[Any]]:
    """A join that keeps the customers whose first touch came from ``source``."""
    if source is None:
        return "", []
    return f" JOIN customers cs ON cs.customer_id = {alias}.customer_id AND cs.source = ${param}", [source]


async def compute(db: Db, names: Sequence[str], windows: Sequence[Window], source: str | None) -> dict[str, Values]:
    """Each named metric over each window."""
    wanted = set(names)
    out: dict[str, Values] = {}
    loaded: dict[str, datetime] | None = None

    async def conversions() -> dict[str, datetime]:
        nonlocal loaded  # several metrics need them: read once per request
        if loaded is None:
            loaded = await _conversions(db, source)
        return loaded

    if wanted & DAILY:
        out.update(await _daily(db, windows, source))
    if "referral_rate" in wanted:
        bases = formulas.counts_before((await conversions()).values(), [w.end for w in windows])
        referrers = out.pop("_referrers")
        out["referral_rate"] = [formulas.ratio(r or 0, b) for r, b in zip(referrers, bases, strict=True)]
    if "nps" in wanted:
        out["nps"] = await _nps(db, windows, source)
    if "trial_to_paid_rate" in wanted:
        out["trial_to_paid_rate"] = await _trials(db, windows, source)
    if "cart_abandonment_rate" in wanted:
        out["cart_abandonment_rate"] = await _carts(db, windows, source)
    if wanted & LIFECYCLE:
        timelines, churns = await _timelines(db, source, await conversions())
        # Each rate walks every converted customer's timeline: compute only the ones asked for.
        if "churn_rate" in wanted:
            out["churn_rate"] = formulas.churn_rates(timelines, churns, windows)
        if "customer_retention_rate" in wanted:
            out["customer_retention_rate"] = formulas.retention_rates(timelines, windows)
    if wanted & ORDERS:
        orders = await load_orders(db, source)
        ends = [w.end for w in windows]
        out["repeat_purchase_rate"] = formulas.repeat_purchase_rates(
            {cid: [at for at, _ in items] for cid, items in orders.items()}, ends
        )
        if "clv_historical" in wanted:
            converted = await conversions()
            out["clv_historical"] = [formulas.clv_historical(orders, converted, end) for end in ends]
    return {name: out[name] for name in names}


# Result name -> daily_facts column, summed per day; names with "_" feed the ratios below.
_SUMS = {
    "social_impressions": "social_impressions",
    "page_views": "page_views",
    "social_follows": "social_follows",
    "social_comments": "social_comments",
    "social_shares": "social_shares",
    "social_likes": "social_likes",
    "podcast_downloads": "podcast_downloads",
    "_orders": "orders",
    "_revenue": "order_revenue",
    "affiliate_revenue": "affiliate_revenue",
    "_csat_answers": "csat_answers",
    "_csat_good": "csat_good",
}
# Distinct customers with the counter above 0: per day a plain count, since a customer has one row a day.
_DISTINCT = {"unique_visitors": "page_views", "podcast_listeners": "podcast_listens", "_referrers": "referrals_sent"}


async def _daily(db: Db, windows: Sequence[Window], source: str | None) -> dict[str, Values]:
    """Sums per day in one pass; distinct customers per day there too (one row per customer and day),
    and for windows longer than a day in a second, narrower pass."""
    first, last = min(w.start for w in windows).date(), max(w.end for w in windows).date()
    join, extra = _source_join("f", source, 3)
    distinct_per_day = ", ".join(f"count(*) FILTER (WHERE f.{column} > 0)" for column in _DISTINCT.values())
    sums = ", ".join(f"sum(f.{column})" for column in _SUMS.values())
    rows = await db.fetch(
        f"SELECT f.day, {sums}, {distinct_per_day} FROM daily_facts f{join}"
        " WHERE f.day >= $1 AND f.day < $2 GROUP BY f.day ORDER BY f.day",
        first,
        last,
        *extra,
    )
    days = [row[0] for row in rows]
    width = len(_SUMS) + len(_DISTINCT)
    running = [[0.0] * width]
    for row in rows:
        running.append([a + float(b or 0) for a, b in zip(running[-1], row[1:], strict=True)])

    def total(window: Window, position: int) -> float:
        lo = bisect.bisect_left(days, window.start.date())
        hi = bisect.bisect_left(days, window.end.date())
        return running[hi][position] - running[lo][position]

    out: dict[str, Values] = {name: [total(w, i) for w in windows] for i, name in enumerate(_SUMS)}
    for offset, name in enumerate(_DISTINCT):
        out[name] = [total(w, len(_SUMS) + offset) for w in windows]
    longer = [i for i, w in enumerate(windows) if w.end - w.start > timedelta(days=1)]
    for name in _DISTINCT:
        for index in longer:
            out[name][index] = 0.0
    for run in _contiguous_runs(windows, longer):
        # One pass per run of back-to-back windows: each row falls in exactly one of them.
        distinct = ", ".join(
            f"count(DISTINCT f.customer_id) FILTER (WHERE f.{column} > 0)" for column in _DISTINCT.values()
        )
        source_join, source_param = _source_join("f", source, 4)
        found = await db.fetch(
            f"""
            SELECT width_bucket(f.day, $3::date[]), {distinct}
            FROM daily_facts f{source_join}
            WHERE f.day >= $1 AND f.day < $2
            GROUP BY 1
            """,
            windows[run[0]].start.date(),
            windows[run[-1]].end.date(),
            [windows[i].start.date() for i in run],
            *source_param,
        )
        for row in found:
            for offset, name in enumerate(_DISTINCT, start=1):
                out[name][run[row[0] - 1]] = float(row[offset])
    revenue, orders = out.pop("_revenue"), out.pop("_orders")
    out["average_order_value"] = [formulas.ratio(r or 0, n or 0) for r, n in zip(revenue, orders, strict=True)]
    good, answers = out.pop("_csat_good"), out.pop("_csat_answers")
    out["csat"] = [formulas.ratio(g or 0, a or 0) for g, a in zip(good, answers, strict=True)]
    return out


def _contiguous_runs(windows: Sequence[Window], indexes: Sequence[int]) -> list[list[int]]:
    """The windows as runs in which each starts where the one before ended (the buckets; the whole apart)."""
    runs: list[list[int]] = []
    for index in sorted(indexes, key=lambda i: (windows[i].start, windows[i].end)):
        run = next((r for r in runs if windows[r[-1]].end == windows[index].start), None)
        if run is None:
            runs.append([index])
        else:
            run.append(index)
    return runs


def _bounds(windows: Sequence[Window]) -> tuple[list[datetime], list[datetime]]:
    return [w.start for w in windows], [w.end for w in windows]


async def _nps(db: Db, windows: Sequence[Window], source: str | None) -> Values:
    join, extra = _source_join("k", source, 3)
    rows = await db.fetch(
        f"""
        SELECT i, count(*) FILTER (WHERE score >= 9), count(*) FILTER (WHERE score <= 6), count(*)
        FROM (
            SELECT DISTINCT ON (b.i, k.customer_id) b.i, k.score
            FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS b(s, e, i)
            JOIN key_events k ON k.name = 'NPS Survey Answered' AND k.at >= b.s AND k.at < b.e{join}
            ORDER BY b.i, k.customer_id, k.at DESC, k.id DESC
        ) latest
        GROUP BY i
        """,
        *_bounds(windows),
        *extra,
    )
    found = {row[0] - 1: formulas.nps(row[1], row[2], row[3]) for row in rows}
    return [found.get(i) for i in range(len(windows))]


async def _trials(db: Db, windows: Sequence[Window], source: str | None) -> Values:
    join, extra = _source_join("t", source, 3)
    rows = await db.fetch(
        f"""
        SELECT b.i, count(DISTINCT t.customer_id), count(DISTINCT t.customer_id) FILTER (WHERE EXISTS (
            SELECT 1 FROM key_events p
            WHERE p.customer_id = t.customer_id AND p.name IN ('Trial Converted', 'Subscription Started')
              AND p.at >= t.at AND p.at <= t.at + interval '30 days'))
        FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS b(s, e, i)
        JOIN key_events t ON t.name = 'Trial Started' AND t.at >= b.s AND t.at < b.e{join}
        GROUP BY b.i
        """,
        *_bounds(windows),
        *extra,
    )
    found = {row[0] - 1: formulas.ratio(row[2], row[1]) for row in rows}
    return [found.get(i) for i in range(len(windows))]


async def _carts(db: Db, windows: Sequence[Window], source: str | None) -> Values:
    join, extra = _source_join("c", source, 3)
    rows = await db.fetch(
        f"""
        SELECT b.i, count(*), count(*) FILTER (WHERE NOT EXISTS (
            SELECT 1 FROM key_events o
            WHERE o.customer_id = c.customer_id AND o.name = 'Order Completed'
              AND o.at >= c.at AND o.at <= c.at + interval '24 hours'
              AND (o.checkout_id IS NULL OR c.checkout_id IS NULL OR o.checkout_id = c.checkout_id)))
        FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS b(s, e, i)
        JOIN key_events c ON c.name = 'Checkout Started' AND c.at >= b.s AND c.at < b.e{join}
        GROUP BY b.i
        """,
        *_bounds(windows),
        *extra,
    )
    found = {row[0] - 1: formulas.ratio(row[2], row[1]) for row in rows}
    return [found.get(i) for i in range(len(windows))]


async def _conversions(db: Db, source: str | None) -> dict[str, datetime]:
    join, extra = _source_join("r", source, 1)
    rows = await db.fetch(
        f"SELECT r.customer_id, r.reached_at FROM stage_reached r{join} WHERE r.stage = 'conversion'", *extra
    )
    return {row[0]: row[1] for row in rows}


async def _timelines(
    db: Db, source: str | None, conversions: dict[str, datetime]
) -> tuple[dict[str, Timeline], list[tuple[str, datetime]]]:
    join, extra = _source_join("h", source, 1)
    rows = await db.fetch(f"SELECT h.customer_id, h.at, h.health FROM health_changes h{join} ORDER BY h.at", *extra)
    health: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    churns: list[tuple[str, datetime]] = []
    for cid, at, state in rows:
        health[cid].append((at, state))
        if state == formulas.CHURNED:
            churns.append((cid, at))
    timelines = {cid: Timeline(at, health.get(cid, ())) for cid, at in conversions.items()}
    return timelines, churns


async def load_orders(db: Db, source: str | None = None) -> dict[str, list[tuple[datetime, float]]]:
    """Every customer's orders (event time, revenue), oldest first."""
    join, extra = _source_join("k", source, 1)
    rows = await db.fetch(
        f"SELECT k.customer_id, k.at, k.revenue FROM key_events k{join} WHERE k.name = 'Order Completed' ORDER BY k.at",
        *extra,
    )
    orders: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for cid, at, revenue in rows:
        orders[cid].append((at, revenue))
    return dict(orders)


@dataclass(frozen=True)
class FunnelStage:
    stage: str
    current: int
    reached: int
    conversion_to_next: float | None
    median_days_to_next: float | None


async def funnel(db: Db, at: datetime) -> tuple[list[FunnelStage], float | None]:
    rows = await db.fetch("SELECT stage, count(*) FROM stage_reached WHERE reached_at < $1 GROUP BY stage", at)
    reached = {row[0]: row[1] for row in rows}
    stages = [s.value for s in STAGE_ORDER]
    pairs = list(itertools.pairwise(stages))
    medians = await db.fetch(
        """
        SELECT a.stage, percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM b.reached_at - a.reached_at))
        FROM unnest($2::text[], $3::text[]) AS n(this, next)
        JOIN stage_reached a ON a.stage = n.this
        JOIN stage_reached b ON b.customer_id = a.customer_id AND b.stage = n.next AND b.reached_at < $1
        GROUP BY a.stage
        """,
        at,
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    median = {row[0]: row[1] / 86400 for row in medians}
    result = []
    for index, stage in enumerate(stages):
        here = reached.get(stage, 0)
        nxt = reached.get(stages[index + 1], 0) if index + 1 < len(stages) else None
        result.append(
            FunnelStage(
                stage=stage,
                current=here - (nxt or 0),
                reached=here,
                conversion_to_next=None if nxt is None else formulas.ratio(nxt, here),
                median_days_to_next=median.get(stage) if nxt is not None else None,
            )
        )
    orders = await load_orders(db)
    share = formulas.top_share(formulas.lifetime_revenue(orders, at).values())
    return result, share


async def stage_series(db: Db, instants: Sequence[datetime]) -> dict[str, list[int]]:
    """Customers at each stage as of each instant (reached it, not the next); instants are midnights (UTC)."""
    rows = await db.fetch(
        "SELECT stage, (reached_at AT TIME ZONE 'UTC')::date, count(*) FROM stage_reached GROUP BY 1, 2 ORDER BY 1, 2"
    )
    days: dict[str, list[date]] = defaultdict(list)
    running: dict[str, list[int]] = defaultdict(list)
    for stage, day, count in rows:
        days[stage].append(day)
        running[stage].append((running[stage][-1] if running[stage] else 0) + count)
    # Reached before a midnight = reached on an earlier day.
    counts = {}
    for stage in (s.value for s in STAGE_ORDER):
        before = [bisect.bisect_left(days[stage], instant.astimezone(UTC).date()) for instant in instants]
        counts[stage] = [running[stage][i - 1] if i else 0 for i in before]
    stages = [s.value for s in STAGE_ORDER]
    out = {}
    for index, stage in enumerate(stages):
        nxt = counts[stages[index + 1]] if index + 1 < len(stages) else [0] * len(instants)
        out[stage] = [a - b for a, b in zip(counts[stage], nxt, strict=True)]
    return out


async def cohorts(db: Db, first: date, last: date) -> list[tuple[str, int, list[float]]]:
    orders = await load_orders(db)
    days = {cid: [at.astimezone(UTC).date() for at, _ in items] for cid, items in orders.items()}
    return formulas.cohort_retention(days, first, last)


async def current_stage_and_health(db: Db) -> tuple[dict[str, int], dict[str, int]]:
    """Customers per current stage and per current health (every one of each), for Prometheus."""
    order = [s.value for s in STAGE_ORDER]
    stage_rows = await db.fetch(
        """
        SELECT stage, count(*) FROM (
            SELECT DISTINCT ON (customer_id) stage FROM stage_reached
            ORDER BY customer_id, array_position($1::text[], stage) DESC
        ) latest GROUP BY stage
        """,
        order,
    )
    health_rows = await db.fetch(
        """
        SELECT health, count(*) FROM (
            SELECT DISTINCT ON (customer_id) health FROM health_changes ORDER BY customer_id, at DESC, event_id DESC
        ) latest GROUP BY health
        """
    )
    # Every stage and health, 0 when nobody is in it: a gauge left out would keep its last count.
    stages = {stage.value: 0 for stage in STAGE_ORDER} | {row[0]: row[1] for row in stage_rows}
    health = {state.value: 0 for state in Health} | {row[0]: row[1] for row in health_rows}
    health["active"] = health.get("active", 0) + sum(stages.values()) - sum(health.values())
    return stages, health


def day_windows(first: date, last: date, granularity: str) -> list[Window]:
    """Buckets from ``first`` (inclusive) to ``last`` (exclusive), aligned to days, ISO weeks or months."""
    windows = []
    start = first
    while start < last:
        if granularity == "day":
            end = start + timedelta(days=1)
        elif granularity == "week":
            end = start + timedelta(days=7 - start.weekday())
        else:
            end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
        end = min(end, last)
        windows.append(Window(midnight(start), midnight(end)))
        start = end
    return windows


async def conversions(db: Db) -> dict[str, datetime]:
    """When each customer reached the conversion stage."""
    return await _conversions(db, None)


async def latest_clv_fit(db: Db) -> Any:
    return await db.fetchrow(
        "SELECT fitted_at, status, customers, mean_12m, reason, distribution FROM clv_fits ORDER BY id DESC LIMIT 1"
    )


async def save_clv_fit(db: Db, fit: ClvFit | InsufficientData, at: datetime) -> None:
    """Keep the newest fits (a few, for the record); the API reads the last."""
    row: tuple[str, int, float | None, str | None, list[dict[str, Any]]]
    if isinstance(fit, ClvFit):
        buckets = [asdict(b) for b in histogram(fit.predictions.values())]
        row = ("fitted", fit.customers, fit.mean_predicted, None, buckets)
    else:
        row = ("insufficient_data", 0, None, fit.reason, [])
    await db.execute(
        "INSERT INTO clv_fits (fitted_at, status, customers, mean_12m, reason, distribution)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
        at,
        row[0],
        row[1],
        row[2],
        row[3],
        orjson.dumps(row[4]).decode(),  # the pool's codec takes jsonb as text and reads it back decoded
    )
    await db.execute("DELETE FROM clv_fits WHERE id < (SELECT max(id) - 9 FROM clv_fits)")
