"""A stand-in for the metrics API the dashboard reads, with the dashboard's routes mounted beside it.

Its numbers are deterministic functions of the dates asked for, so another range gives other
numbers; a top customer id and the echoed source can carry markup, to prove the page shows it as text.
"""

from __future__ import annotations

import math
import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query

from metrics.dashboard.routes import dashboard_router

# A customer id and a first-touch source: markup, control characters (an ANSI escape among them) and
# direction marks (an RTL override would flip what follows on screen if it were not kept as text).
HOSTILE = "<script>alert(1)</script> \x01\x1b[31m red \u202etxet\u202c \u200f'; DROP TABLE customers; --"
# A campaign's name: an attribute-breaking image whose onerror would run if it became markup.
HOSTILE_CAMPAIGN = '"><img src=x onerror=alert(1)> \x07\x1b[1m \u200f\u202eeman\u202c \u2066iso\u2069 ü😀'

STAGES = ["discovery", "engagement", "conversion", "retention", "loyalty", "advocacy"]
# name -> (stage, kind, typical daily value)
METRICS: dict[str, tuple[str, str, float]] = {
    "social_impressions": ("discovery", "count", 5200),
    "page_views": ("discovery", "count", 1800),
    "unique_visitors": ("discovery", "count", 640),
    "podcast_listeners": ("discovery", "count", 210),
    "social_follows": ("engagement", "count", 48),
    "social_comments": ("engagement", "count", 95),
    "social_shares": ("engagement", "count", 60),
    "social_likes": ("engagement", "count", 720),
    "podcast_downloads": ("engagement", "count", 150),
    "nps": ("engagement", "score", 32),
    "trial_to_paid_rate": ("conversion", "ratio", 0.22),
    "cart_abandonment_rate": ("conversion", "ratio", 0.58),
    "average_order_value": ("conversion", "money", 74.5),
    "churn_rate": ("retention", "ratio", 0.045),
    "repeat_purchase_rate": ("retention", "ratio", 0.31),
    "customer_retention_rate": ("retention", "ratio", 0.64),
    "clv_historical": ("loyalty", "money", 412.0),
    "csat": ("loyalty", "score", 4.3),
    "referral_rate": ("advocacy", "ratio", 0.07),
    "affiliate_revenue": ("advocacy", "money", 380.0),
}

Granularity = Literal["day", "week", "month"]


def _wave(day: date, salt: int) -> float:
    """A smooth, repeatable factor around 1 that differs from day to day and metric to metric."""
    n = day.toordinal()
    return 1 + 0.2 * math.sin(n / 9 + salt) + 0.08 * math.sin(n / 2.3 + 2 * salt) + 0.0004 * (n % 400)


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]


def _buckets(start: date, end: date, granularity: Granularity) -> list[tuple[date, date]]:
    bounds: list[tuple[date, date]] = []
    at = start
    while at < end:
        if granularity == "day":
            nxt = at + timedelta(days=1)
        elif granularity == "week":
            nxt = at + timedelta(days=7)
        else:
            nxt = (at.replace(day=1) + timedelta(days=32)).replace(day=1)
        bounds.append((at, min(nxt, end)))
        at = nxt
    return bounds


def _value(name: str, start: date, end: date, scale: float) -> float | None:
    _, kind, typical = METRICS[name]
    salt = list(METRICS).index(name)
    days = _days(start, end)
    if not days:
        return None
    daily = [typical * _wave(day, salt) for day in days]
    if kind == "count":
        return float(round(sum(daily) * scale))
    mean = sum(daily) / len(daily)
    if kind == "ratio":
        return round(min(mean, 1.0), 4)
    return round(mean, 2)


def _window(from_: date, to: date) -> None:
    if to <= from_:
        raise HTTPException(422, {"field": "to", "error": "must be after from"})


def _check_token(token: str) -> Any:
    def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if not authorization or not secrets.compare_digest(authorization, f"Bearer {token}"):
            raise HTTPException(401, "a valid API token is needed", headers={"WWW-Authenticate": "Bearer"})

    return check


def metrics_api_router() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/metrics/names")
    def names() -> dict[str, Any]:
        return {
            "metrics": [
                {"name": name, "stage": stage, "kind": kind, "description": f"{name} (test double)"}
                for name, (stage, kind, _) in METRICS.items()
            ]
        }

    @router.get("/v1/metrics")
    def metrics(
        names: str,
        from_: Annotated[date, Query(alias="from")],
        to: date,
        granularity: Granularity = "day",
        source: str | None = None,
    ) -> dict[str, Any]:
        _window(from_, to)
        scale = 0.4 if source else 1.0
        out: dict[str, Any] = {}
        for name in names.split(","):
            if name not in METRICS:
                raise HTTPException(422, {"field": "names", "error": f"unknown metric {name!r}"})
            stage, kind, _ = METRICS[name]
            series = [
                {"start": start.isoformat(), "value": _value(name, start, end, scale)}
                for start, end in _buckets(from_, to, granularity)
            ]
            out[name] = {"stage": stage, "kind": kind, "total": _value(name, from_, to, scale), "series": series}
        return {
            "from": from_.isoformat(),
            "to": to.isoformat(),
            "granularity": granularity,
            "source": source,
            "metrics": out,
        }

    @router.get("/v1/stages")
    def stages(
        from_: Annotated[date, Query(alias="from")], to: date, granularity: Granularity = "day"
    ) -> dict[str, Any]:
        _window(from_, to)
        series: dict[str, list[dict[str, Any]]] = {}
        for i, stage in enumerate(STAGES):
            base = 400 / (i + 1.4)
            series[stage] = [
                {"start": start.isoformat(), "value": round(base * _wave(end, i) + 2 * (end.toordinal() % 50))}
                for start, end in _buckets(from_, to, granularity)
            ]
        return {"series": series}

    @router.get("/v1/funnel")
    def funnel(at: datetime | None = None) -> dict[str, Any]:
        when = (at or datetime.now(UTC)).date()
        reached = [round(1200 * _wave(when, 1))]
        for i in range(1, len(STAGES)):
            reached.append(round(reached[-1] * min(0.95, (0.62 - 0.05 * i) * _wave(when, i))))
        rows = []
        for i, stage in enumerate(STAGES):
            last = i + 1 == len(STAGES)
            rows.append(
                {
                    "stage": stage,
                    "current": round(reached[i] * 0.4),
                    "reached": reached[i],
                    "conversion_to_next": None if last else round(reached[i + 1] / reached[i], 4),
                    "median_days_to_next": None if last else round(2.5 + 3 * i * _wave(when, i), 1),
                }
            )
        return {"at": f"{when.isoformat()}T00:00:00Z", "stages": rows, "top20_revenue_share": 0.61}

    @router.get("/v1/cohorts")
    def cohorts(from_: Annotated[date, Query(alias="from")], to: date) -> dict[str, Any]:
        _window(from_, to)
        months = sorted({day.replace(day=1) for day in _days(from_, to)})
        last = months[-1]
        rows = []
        for i, month in enumerate(months):
            width = (last.year - month.year) * 12 + last.month - month.month + 1
            decay = 0.3 + 0.1 * _wave(month, i)
            rows.append(
                {
                    "cohort": month.strftime("%Y-%m"),
                    "customers": round(80 * _wave(month, 3)),
                    "retention": [1.0] + [round(decay / (k**0.7), 3) for k in range(1, width)],
                }
            )
        return {"cohorts": rows}

    @router.get("/v1/clv")
    def clv() -> dict[str, Any]:
        return {
            "historical": {"mean": 412.37, "customers": 1324},
            "predicted": {"status": "fitted", "mean_12m": 186.4, "fitted_at": "2026-11-20T03:00:00Z", "reason": None},
            "distribution": [
                {"lower": lower, "upper": lower + 100 if lower < 900 else None, "customers": count}
                for lower, count in zip(range(0, 1000, 100), [310, 280, 214, 160, 118, 84, 60, 41, 30, 27], strict=True)
            ],
            "top_customers": [
                {"customer_id": HOSTILE, "revenue": 9120.5},
                {"customer_id": "cus_8f2a91", "revenue": 7410.0},
                {"customer_id": "cus_17bd03", "revenue": 6385.25},
                {"customer_id": "cus_c0ffee", "revenue": 5102.8},
                {"customer_id": "cus_4e11a7", "revenue": 4870.0},
            ],
        }

    return router


def empty_metrics_api_router() -> APIRouter:
    """The API of a platform that has seen no customers yet: zero counts, empty denominators."""
    router = APIRouter()
    full = metrics_api_router()

    @router.get("/v1/metrics")
    def metrics(
        names: str,
        from_: Annotated[date, Query(alias="from")],
        to: date,
        granularity: Granularity = "day",
        source: str | None = None,
    ) -> dict[str, Any]:
        _window(from_, to)
        out: dict[str, Any] = {}
        for name in names.split(","):
            stage, kind, _ = METRICS[name]
            empty = 0.0 if kind == "count" else None
            series = [{"start": start.isoformat(), "value": empty} for start, _ in _buckets(from_, to, granularity)]
            out[name] = {"stage": stage, "kind": kind, "total": empty, "series": series}
        return {
            "from": from_.isoformat(),
            "to": to.isoformat(),
            "granularity": granularity,
            "source": source,
            "metrics": out,
        }

    @router.get("/v1/stages")
    def stages(
        from_: Annotated[date, Query(alias="from")], to: date, granularity: Granularity = "day"
    ) -> dict[str, Any]:
        _window(from_, to)
        starts = [start.isoformat() for start, _ in _buckets(from_, to, granularity)]
        return {"series": {stage: [{"start": start, "value": 0} for start in starts] for stage in STAGES}}

    @router.get("/v1/funnel")
    def funnel(at: datetime | None = None) -> dict[str, Any]:
        rows = [
            {"stage": stage, "current": 0, "reached": 0, "conversion_to_next": None, "median_days_to_next": None}
            for stage in STAGES
        ]
        return {"at": (at or datetime.now(UTC)).isoformat(), "stages": rows, "top20_revenue_share": None}

    @router.get("/v1/cohorts")
    def cohorts(from_: Annotated[date, Query(alias="from")], to: date) -> dict[str, Any]:
        _window(from_, to)
        return {"cohorts": []}

    @router.get("/v1/clv")
    def clv() -> dict[str, Any]:
        return {
            "historical": {"mean": None, "customers": 0},
            "predicted": {"status": "not_fitted_yet", "mean_12m": None, "fitted_at": None, "reason": None},
            "distribution": [],
            "top_customers": [],
        }

    # The list of names does not depend on data.
    router.routes.extend(route for route in full.routes if getattr(route, "path", "") == "/v1/metrics/names")
    return router


def metrics_api_double(token: str, *, empty: bool = False) -> FastAPI:
    """The API behind a bearer-token check, and the open dashboard routes, in one app."""
    app = FastAPI(title="metrics API double")
    api = empty_metrics_api_router() if empty else metrics_api_router()
    app.include_router(api, dependencies=[Depends(_check_token(token))])
    app.include_router(dashboard_router)
    return app
