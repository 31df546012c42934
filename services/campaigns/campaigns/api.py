"""Campaigns API: definitions with versions, pause/resume/archive, stats with uplift, members and messages.

Every route is behind the shared token dependency (``create_service_app(routers=...)``): a read token
for GETs, an admin token for changes. Errors are JSON with a ``detail`` that starts with the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from campaigns import registry
from campaigns.definitions import Campaign, DefinitionError, parse_campaign
from campaigns.registry import Origin, Registered, Status
from campaigns.stats import CampaignStats, campaign_stats
from clm_shared.paths import ANY_TEXT, ONE_SEGMENT
from clm_shared.transactions import Db, transaction

router = APIRouter(prefix="/v1", tags=["campaigns"])

MEMBER_STATUSES = ["active", "waiting"]


def _engine(request: Request) -> AsyncEngine:
    return request.app.state.ctx.engine  # type: ignore[no-any-return]


Engine = Annotated[AsyncEngine, Depends(_engine)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]
# Cursors are ids of the database's own ranges: anything outside is a 422, not a driver error.
Cursor = Annotated[int | None, Query(ge=0, le=2**63 - 1, description="`next` of the previous page.")]
EXAMPLE = {
    "id": "welcome",
    "name": "Welcome",
    "trigger": {"stage_entered": "engagement"},
    "audience": [{"field": "traits.plan", "op": "ne", "value": "enterprise"}],
    "steps": [
        {"type": "wait", "duration": "1h"},
        {"type": "send", "name": "welcome mail", "template": {"subject": "Hi", "html": "<p>Hi</p>", "text": "Hi"}},
    ],
}
# Any JSON: parse_campaign judges it, so the API refuses a definition as the YAML loader does (field named).
DefinitionBody = Annotated[Any, Body(description="A campaign definition, as in the YAML files.", examples=[EXAMPLE])]


# ---- response models -------------------------------------------------------------------------


class CampaignSummary(BaseModel):
    id: str
    name: str
    version: int
    status: Status
    origin: Origin
    trigger: dict[str, Any]
    updated_at: datetime


class CampaignPublic(CampaignSummary):
    definition: dict[str, Any]


class CampaignList(BaseModel):
    items: list[CampaignSummary]


class VersionPublic(BaseModel):
    id: str
    version: int
    current: bool
    definition: dict[str, Any]


class StatsPublic(CampaignStats):
    campaign_id: str
    name: str
    status: Status


class StatsList(BaseModel):
    items: list[StatsPublic]


class Member(BaseModel):
    run_id: int
    customer_id: str
    status: str
    version: int
    step: int
    step_type: str | None
    step_name: str | None
    variant: str | None
    since: datetime
    due_at: datetime | None
    waiting_for: str | None


class MemberPage(BaseModel):
    items: list[Member]
    next: int | None


class MessagePublic(BaseModel):
    message_id: int
    campaign_id: str
    version: int
    step: int
    step_name: str
    channel: str
    variant: str | None
    status: str
    reason: str | None
    attempts: int
    due_at: datetime
    created_at: datetime
    sent_at: datetime | None


class MessagePage(BaseModel):
    items: list[MessagePublic]
    next: int | None


# ---- helpers ---------------------------------------------------------------------------------


def _definition(campaign: Campaign) -> dict[str, Any]:
    return campaign.model_dump(mode="json", exclude_none=True)


def _summary(found: Registered) -> CampaignSummary:
    c = found.campaign
    return CampaignSummary(
        id=c.id,
        name=c.name,
        version=found.version,
        status=found.status,
        origin=found.origin,
        trigger=c.trigger.model_dump(mode="json", exclude_none=True),
        updated_at=found.updated_at,
    )


def _public(found: Registered) -> CampaignPublic:
    return CampaignPublic(**_summary(found).model_dump(), definition=_definition(found.campaign))


class Problem(BaseModel):
    """A refused definition: the field and what is wrong (FastAPI's own list when the body is missing)."""

    detail: str | list[dict[str, Any]]


# Definitions are checked by parse_campaign, whose 422 is one line naming the fields, not FastAPI's list.
INVALID_DEFINITION: dict[int | str, dict[str, Any]] = {422: {"model": Problem, "description": "An invalid definition"}}


def _parse(data: Any) -> Campaign:
    try:
        return parse_campaign(data)
    except DefinitionError as exc:
        raise HTTPException(422, str(exc)) from None


def _not_found(campaign_id: str) -> HTTPException:
    return HTTPException(404, f"id: no campaign {campaign_id!r}")


async def _lock(db: Db, campaign_id: str) -> None:
    """Two changes of one campaign at once would both pick the same next version: one waits for the other."""
    await db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"campaigns:{campaign_id}")


async def _existing(db: Db, campaign_id: str) -> Registered:
    found = await registry.get(db, campaign_id)
    if found is None:
        raise _not_found(campaign_id)
    return found


async def _counts(db: Db, campaign_ids: list[str]) -> dict[str, dict[str, int]]:
    rows = await db.fetch(
        "SELECT campaign_id, counter, count FROM campaign_counts WHERE campaign_id = ANY($1::text[])", campaign_ids
    )
    counts: dict[str, dict[str, int]] = {campaign_id: {} for campaign_id in campaign_ids}
    for row in rows:
        counts[row["campaign_id"]][row["counter"]] = row["count"]
    return counts


def _stats(found: Registered, counts: dict[str, int]) -> StatsPublic:
    return StatsPublic(
        campaign_id=found.campaign.id,
        name=found.campaign.name,
        status=found.status,
        **campaign_stats(counts).model_dump(),
    )


def _now() -> datetime:
    return datetime.now(UTC)


# ---- definitions -----------------------------------------------------------------------------


@router.get("/campaigns", response_model=CampaignList)
async def list_campaigns(engine: Engine, include_archived: bool = False) -> CampaignList:
    """Every campaign with its current version and status, by id (archived ones on request)."""
    async with transaction(engine) as db:
        found = await registry.list_all(db, include_archived=include_archived)
    return CampaignList(items=[_summary(f) for f in found])


@router.post("/campaigns", response_model=CampaignPublic, status_code=201, responses=INVALID_DEFINITION)
async def create_campaign(data: DefinitionBody, engine: Engine) -> CampaignPublic:
    """A new campaign at version 1, live; an archived one's id may be reused (its next version)."""
    campaign = _parse(data)
    async with transaction(engine) as db:
        await _lock(db, campaign.id)
        current = await registry.get(db, campaign.id)
        if current is not None and current.status != "archived":
            raise HTTPException(409, f"id: campaign {campaign.id!r} exists; PUT /v1/campaigns/{campaign.id} changes it")
        saved = await registry.save(db, campaign, origin="api", now=_now())
    return _public(saved)


@router.get(f"/campaigns/{{campaign_id:{ONE_SEGMENT}}}", response_model=CampaignPublic)
async def get_campaign(campaign_id: str, engine: Engine) -> CampaignPublic:
    """The current definition, its version and the campaign's status."""
    async with transaction(engine) as db:
        return _public(await _existing(db, campaign_id))


@router.put(f"/campaigns/{{campaign_id:{ONE_SEGMENT}}}", response_model=CampaignPublic, responses=INVALID_DEFINITION)
async def change_campaign(campaign_id: str, data: DefinitionBody, engine: Engine) -> CampaignPublic:
    """A changed definition becomes the next version (runs in progress finish theirs); an unchanged one keeps it."""
    campaign = _parse(data)
    if campaign.id != campaign_id:
        raise HTTPException(422, f"id: must be {campaign_id!r}, the campaign in the path")
    async with transaction(engine) as db:
        await _lock(db, campaign_id)
        current = await _existing(db, campaign_id)
        if current.status == "archived":
            raise HTTPException(409, f"status: campaign {campaign_id!r} is archived; POST it to bring it back")
        saved = await registry.save(db, campaign, origin="api", now=_now())
    return _public(saved)


@router.delete(f"/campaigns/{{campaign_id:{ONE_SEGMENT}}}", status_code=204)
async def archive_campaign(campaign_id: str, engine: Engine) -> Response:
    """Archive: no new customers enter; runs in progress finish. Its versions and stats stay readable."""
    async with transaction(engine) as db:
        await _lock(db, campaign_id)
        if not await registry.set_status(db, campaign_id, "archived", now=_now()):
            raise _not_found(campaign_id)
    return Response(status_code=204)


@router.get(f"/campaigns/{{campaign_id:{ONE_SEGMENT}}}/versions/{{version}}", response_model=VersionPublic)
async def get_version(
    campaign_id: str, version: Annotated[int, Path(ge=1, le=2**31 - 1)], engine: Engine
) -> VersionPublic:
    """One stored version of a campaign, as runs that started on it see it."""
    async with transaction(engine) as db:
        current = await _existing(db, campaign_id)
        found = await registry.versions(db, {(campaign_id, version)})
    if (campaign_id, version) not in found:
        raise HTTPException(404, f"version: campaign {campaign_id!r} has no version {version}")
    return VersionPublic(
        id=campaign_id,
        version=version,
        current=version == current.version,
        definition=_definition(found[(campaign_id, version)]),
    )


async def _set_status(engine: AsyncEngine, campaign_id: str, status: Status) -> CampaignSummary:
    async with transaction(engine) as db:
        await _lock(db, campaign_id)
        current = await _existing(db, campaign_id)
        if current.status == "archived":
            raise HTTPException(409, f"status: campaign {campaign_id!r} is archived; POST it to bring it back")
        now = _now()
        await registry.set_status(db, campaign_id, status, now=now)
    return _summary(Registered(current.campaign, current.version, status, current.origin, now))


@router.post(f"/campaigns/{{campaign_id:{ONE_SEGMENT}}}/pause", response_model=CampaignSummary)
async def pause_campaign(campaign_id: str, engine: Engine) -> CampaignSummary:
    """No new entries and no sends (held back as ``paused``) until it is resumed."""
    return await _set_status(engine, campaign_id, "paused")


@router.post(f"/campaigns/{{campaign_id:{ONE_SEGMENT}}}/resume", response_model=CampaignSummary)
async def resume_campaign(campaign_id: str, engine: Engine) -> CampaignSummary:
    """Live again; an archived campaign cannot be resumed (409)."""
    return await _set_status(engine, campaign_id, "live")


# ---- stats -----------------------------------------------------------------------------------


@router.get(f"/campaigns/{{campaign_id:{ONE_SEGMENT}}}/stats", response_model=StatsPublic)
async def get_stats(campaign_id: str, engine: Engine) -> StatsPublic:
    """Entries, sends, conversion of treatment against holdout (uplift), and sends held back by reason."""
    async with transaction(engine) as db:
        found = await _existing(db, campaign_id)
        counts = await _counts(db, [campaign_id])
    return _stats(found, counts[campaign_id])


@router.get("/campaign-stats", response_model=StatsList)
async def all_stats(engine: Engine) -> StatsList:
    """The stats of every campaign not archived, by id (what the metrics dashboard shows)."""
    async with transaction(engine) as db:
        found = await registry.list_all(db)
        counts = await _counts(db, [f.campaign.id for f in found])
    return StatsList(items=[_stats(f, counts[f.campaign.id]) for f in found])


# ---- members and messages --------------------------------------------------------------------


@router.get(f"/campaigns/{{campaign_id:{ONE_SEGMENT}}}/members", response_model=MemberPage)
async def members(
    campaign_id: str,
    engine: Engine,
    limit: Limit = 100,
    after: Cursor = None,
) -> MemberPage:
    """Customers in the campaign now (runs active or waiting), by run id, with the step each is at."""
    async with transaction(engine) as db:
        if await db.fetchval("SELECT 1 FROM campaigns WHERE campaign_id = $1", campaign_id) is None:
            raise _not_found(campaign_id)
        rows = await db.fetch(
            "SELECT run_id, customer_id, status, version, step, variant, step_since, due_at, waiting_for FROM runs"
            " WHERE campaign_id = $1 AND status = ANY($2::text[]) AND run_id > $3 ORDER BY run_id LIMIT $4",
            campaign_id,
            MEMBER_STATUSES,
            after if after is not None else 0,
            limit + 1,
        )
        page = rows[:limit]
        definitions = await registry.versions(db, {(campaign_id, r["version"]) for r in page})
    items = []
    for r in page:
        steps = definitions[(campaign_id, r["version"])].steps if (campaign_id, r["version"]) in definitions else []
        step = steps[r["step"]] if 0 <= r["step"] < len(steps) else None
        items.append(
            Member(
                run_id=r["run_id"],
                customer_id=r["customer_id"],
                status=r["status"],
                version=r["version"],
                step=r["step"],
                step_type=None if step is None else step.type,
                step_name=getattr(step, "name", None),
                variant=r["variant"],
                since=r["step_since"],
                due_at=r["due_at"],
                waiting_for=r["waiting_for"],
            )
        )
    return MemberPage(items=items, next=items[-1].run_id if len(rows) > limit else None)


@router.get(f"/customers/{{customer_id:{ANY_TEXT}}}/messages", response_model=MessagePage)
async def customer_messages(
    customer_id: str,
    engine: Engine,
    limit: Limit = 50,
    before: Cursor = None,
) -> MessagePage:
    """What campaigns sent or held back for one customer (userId or a known anonymousId), newest first."""
    async with transaction(engine) as db:
        canonical = await db.fetchval("SELECT customer_id FROM identities WHERE alias_id = $1", customer_id)
        rows = await db.fetch(
            "SELECT message_id, campaign_id, version, step, step_name, channel, variant, status, reason, attempts,"
            " due_at, created_at, sent_at FROM messages WHERE customer_id = $1"
            " AND ($2::bigint IS NULL OR message_id < $2) ORDER BY message_id DESC LIMIT $3",
            canonical or customer_id,
            before,
            limit + 1,
        )
    # last_error is left out on purpose: a mail server's answer can quote the address.
    items = [MessagePublic.model_validate(dict(r)) for r in rows[:limit]]
    return MessagePage(items=items, next=items[-1].message_id if len(rows) > limit else None)
