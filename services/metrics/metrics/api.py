"""Metrics API: series of any metric over a window, the funnel, cohorts and CLV (a read token for each)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import httpx
import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.transactions import transaction
from metrics import formulas, queries
from metrics.clv import histogram
from metrics.definitions import METRICS, Kind
from metrics.formulas import Window

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1", tags=["metrics"])

GRANULARITIES = ("day", "week", "month")
MAX_BUCKETS = 1000


def _engine(request: Request) -> AsyncEngine:
    return request.app.state.ctx.engine  # type: ignore[no-any-return]


Engine = Annotated[AsyncEngine, Depends(_engine)]


def bad(parameter: str, message: str) -> HTTPException:
    return HTTPException(400, {"parameter": parameter, "message": message})


def parse_day(value: str | None, parameter: str, default: date) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise bad(parameter, "expected a date, YYYY-MM-DD") from None


def parse_instant(value: str | None, parameter: str) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad(parameter, "expected a date or an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_range(start: str | None, end: str | None) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    last = parse_day(end, "to", today + timedelta(days=1))
    first = parse_day(start, "from", last - timedelta(days=30))
    if first >= last:
        raise bad("from", "must be before `to` (windows are [from, to))")
    return first, last


def parse_buckets(start: str | None, end: str | None, granularity: str) -> tuple[date, date, list[Window]]:
    """The window and its buckets, or a 400 naming the parameter."""
    if granularity not in GRANULARITIES:
        raise bad("granularity", f"must be one of {', '.join(GRANULARITIES)}")
    first, last = parse_range(start, end)
    buckets = queries.day_windows(first, last, granularity)
    if len(buckets) > MAX_BUCKETS:
        raise bad("granularity", f"{len(buckets)} buckets; at most {MAX_BUCKETS}: use a coarser granularity")
    return first, last, buckets


class Point(BaseModel):
    start: date
    value: float | None


class Series(BaseModel):
    stage: str
    kind: Kind
    total: float | None
    series: list[Point]


class MetricsAnswer(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    from_: date = Field(alias="from")
    to: date
    granularity: str
    source: str | None
    metrics: dict[str, Series]


@router.get("/metrics/names")
async def metric_names() -> dict[str, list[dict[str, str]]]:
    """Every metric: name, stage, kind and definition."""
    return {
        "metrics": [
            {"name": m.name, "stage": m.stage, "kind": m.kind, "description": m.description} for m in METRICS.values()
        ]
    }


@router.get("/metrics", response_model=MetricsAnswer)
async def metrics(
    engine: Engine,
    names: str | None = None,
    start: Annotated[str | None, Query(alias="from", description="First day (default: 30 days before `to`).")] = None,
    end: Annotated[str | None, Query(alias="to", description="Day after the last (default: tomorrow).")] = None,
    granularity: str = "day",
    source: str | None = None,
) -> MetricsAnswer:
    """A series per metric over ``[from, to)`` in buckets of the granularity, and its value over the whole window.

    ``source`` keeps the customers whose first touch carried that ``context.campaign.source``.
    """
    if source is not None and "\x00" in source:  # sent on, the database's error was a 500
        raise bad("source", "cannot hold the NUL character (U+0000): no stored source does")
    wanted = [n.strip() for n in (names or ",".join(METRICS)).split(",") if n.strip()]
    unknown = [n for n in wanted if n not in METRICS]
    if unknown or not wanted:
        raise bad("names", f"unknown metric(s) {', '.join(unknown) or '(none)'}; see /v1/metrics/names")
    first, last, buckets = parse_buckets(start, end, granularity)
    whole = Window(queries.midnight(first), queries.midnight(last))
    async with transaction(engine) as db:
        values = await queries.compute(db, wanted, [*buckets, whole], source)
    return MetricsAnswer(
        from_=first,
        to=last,
        granularity=granularity,
        source=source,
        metrics={
            name: Series(
                stage=METRICS[name].stage,
                kind=METRICS[name].kind,
                total=values[name][-1],
                series=[Point(start=w.start.date(), value=v) for w, v in zip(buckets, values[name], strict=False)],
            )
            for name in wanted
        },
    )


@router.get("/stages")
async def stages(
    engine: Engine,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    granularity: str = "day",
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Customers at each stage at the end of each bucket."""
    *_, buckets = parse_buckets(start, end, granularity)
    async with transaction(engine) as db:
        counts = await queries.stage_series(db, [w.end for w in buckets])
    return {
        "series": {
            stage: [{"start": w.start.date().isoformat(), "value": v} for w, v in zip(buckets, values, strict=True)]
            for stage, values in counts.items()
        }
    }


@router.get("/funnel")
async def funnel(engine: Engine, at: str | None = None) -> dict[str, Any]:
    """Customers per current stage and who reached each, conversion and median days between stages."""
    instant = parse_instant(at, "at")
    async with transaction(engine) as db:
        stages, share = await queries.funnel(db, instant)
    return {
        "at": instant.isoformat().replace("+00:00", "Z"),
        "stages": [s.__dict__ for s in stages],
        "top20_revenue_share": share,
    }


@router.get("/cohorts")
async def cohorts(
    engine: Engine,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
) -> dict[str, list[dict[str, Any]]]:
    """Monthly cohorts by first order in ``[from, to)``: share with an order k months later (index 0: the month)."""
    first, last = parse_range(start, end)
    async with transaction(engine) as db:
        rows = await queries.cohorts(db, first, last - timedelta(days=1))
    return {"cohorts": [{"cohort": c, "customers": n, "retention": shares} for c, n, shares in rows]}


@router.get("/clv")
async def clv(engine: Engine) -> dict[str, Any]:
    """Historical CLV now, the latest predicted-CLV fit (or why there is none), its distribution, top customers."""
    now = datetime.now(UTC)
    async with transaction(engine) as db:
        orders = await queries.load_orders(db)
        converted = await queries.conversions(db)
        fit = await queries.latest_clv_fit(db)
    revenue = formulas.lifetime_revenue(orders, now)
    customers = [cid for cid, at in converted.items() if at < now]
    top = sorted(revenue.items(), key=lambda item: (-item[1], item[0]))[:10]
    predicted: dict[str, Any] = {"status": "not_fitted_yet", "mean_12m": None, "fitted_at": None, "reason": None}
    if fit is not None:
        predicted = {
            "status": fit["status"],
            "mean_12m": fit["mean_12m"],
            "fitted_at": fit["fitted_at"].isoformat().replace("+00:00", "Z"),
            "reason": fit["reason"],
            "customers": fit["customers"],
            "distribution": fit["distribution"],
        }
    return {
        "historical": {"mean": formulas.clv_historical(orders, converted, now), "customers": len(customers)},
        "predicted": predicted,
        "distribution": [asdict(b) for b in histogram(revenue.get(cid, 0.0) for cid in customers)],
        "top_customers": [{"customer_id": cid, "revenue": value} for cid, value in top],
    }


CAMPAIGNS_TIMEOUT_S = 3.0


class CampaignFigures(BaseModel):
    campaign_id: str
    name: str
    sent: int
    converted: int
    conversion_rate: float | None
    uplift: float | None


class DashboardCampaigns(BaseModel):
    available: bool
    items: list[CampaignFigures]


@router.get("/dashboard/campaigns", response_model=DashboardCampaigns)
async def dashboard_campaigns(request: Request) -> DashboardCampaigns:
    """Sent, converted and uplift per campaign, asked of the campaigns API (metrics never reads its tables).

    The caller's own token goes along, so campaigns checks it as usual. When campaigns is down, slow
    or refuses, the dashboard still loads: ``available`` is false and there are no items.
    """
    url = request.app.state.ctx.settings.campaigns_url.rstrip("/") + "/v1/campaign-stats"
    headers = {"Authorization": request.headers.get("authorization", "")}
    status: int | None = None
    try:
        # trust_env=False: a service-to-service call carrying a token goes to campaigns, never via a proxy.
        async with httpx.AsyncClient(timeout=CAMPAIGNS_TIMEOUT_S, trust_env=False) as client:
            response = await client.get(url, headers=headers)
        status = response.status_code
        response.raise_for_status()
        items = [CampaignFigures.model_validate(item) for item in response.json()["items"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        # The error's class and the status only: an exception's text may carry the request it was about.
        log.warning("campaigns stats unavailable", error=exc.__class__.__name__, status=status)
        return DashboardCampaigns(available=False, items=[])
    return DashboardCampaigns(available=True, items=items)
