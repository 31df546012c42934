"""Campaign definitions in the database: immutable versions, one current version and a status each.

A change to a campaign stores a new version and points the campaign at it; runs keep the version
they started with, so customers in a run finish the journey they began.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from campaigns.definitions import Campaign
from clm_shared.transactions import Db

Status = Literal["live", "paused", "archived"]
Origin = Literal["shipped", "folder", "api"]


@dataclass(frozen=True)
class Registered:
    campaign: Campaign
    version: int
    status: Status
    origin: Origin
    updated_at: datetime


def _campaign(definition: object) -> Campaign:
    data = orjson.loads(definition) if isinstance(definition, str | bytes) else definition
    return Campaign.model_validate(data)


def _registered(row: Any) -> Registered:
    return Registered(_campaign(row["definition"]), row["version"], row["status"], row["origin"], row["updated_at"])


def _dump(campaign: Campaign) -> str:
    """JSON text: the engine's connections take jsonb parameters as text and return them decoded."""
    return campaign.model_dump_json(exclude_none=True)


async def get(db: Db, campaign_id: str) -> Registered | None:
    row = await db.fetchrow(
        "SELECT c.version, c.status, c.origin, c.updated_at, v.definition FROM campaigns c"
        " JOIN campaign_versions v USING (campaign_id, version) WHERE c.campaign_id = $1",
        campaign_id,
    )
    return None if row is None else _registered(row)


async def list_all(db: Db, *, include_archived: bool = False) -> list[Registered]:
    rows = await db.fetch(
        "SELECT c.version, c.status, c.origin, c.updated_at, v.definition FROM campaigns c"
        " JOIN campaign_versions v USING (campaign_id, version)"
        + ("" if include_archived else " WHERE c.status <> 'archived'")
        + " ORDER BY c.campaign_id"
    )
    return [_registered(r) for r in rows]


async def versions(db: Db, keys: set[tuple[str, int]]) -> dict[tuple[str, int], Campaign]:
    """The definitions runs refer to, by (campaign id, version)."""
    if not keys:
        return {}
    ids, numbers = zip(*sorted(keys), strict=True)
    rows = await db.fetch(
        "SELECT campaign_id, version, definition FROM campaign_versions"
        " WHERE (campaign_id, version) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
        list(ids),
        list(numbers),
    )
    return {(r["campaign_id"], r["version"]): _campaign(r["definition"]) for r in rows}


async def version_count(db: Db) -> int:
    """How many versions are stored: they are only ever added, so an unchanged count means no new one."""
    return int(await db.fetchval("SELECT count(*) FROM campaign_versions"))


async def all_versions(db: Db) -> list[Campaign]:
    """Every stored version of every campaign, archived and old ones too."""
    return [_campaign(row["definition"]) for row in await db.fetch("SELECT definition FROM campaign_versions")]


async def save(db: Db, campaign: Campaign, *, origin: Origin, now: datetime) -> Registered:
    """Store a campaign: a new one at version 1, a changed one as its next version, an unchanged one as is.

    Saving an archived campaign brings it back live.
    """
    current = await get(db, campaign.id)
    if current is not None and current.campaign == campaign and current.status != "archived":
        return current
    version = await db.fetchval(
        "SELECT coalesce(max(version), 0) + 1 FROM campaign_versions WHERE campaign_id = $1", campaign.id
    )
    await db.execute(
        "INSERT INTO campaign_versions (campaign_id, version, definition, created_at) VALUES ($1, $2, $3, $4)",
        campaign.id,
        version,
        _dump(campaign),
        now,
    )
    status: Status = "live" if current is None or current.status == "archived" else current.status
    await db.execute(
        "INSERT INTO campaigns (campaign_id, version, status, origin, updated_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (campaign_id) DO UPDATE SET version = excluded.version, status = excluded.status,"
        " origin = excluded.origin, updated_at = excluded.updated_at",
        campaign.id,
        version,
        status,
        origin,
        now,
    )
    return Registered(campaign, version, status, origin, now)


async def set_status(db: Db, campaign_id: str, status: Status, *, now: datetime) -> bool:
    result = await db.execute(
        "UPDATE campaigns SET status = $2, updated_at = $3 WHERE campaign_id = $1", campaign_id, status, now
    )
    return bool(int(result.split()[-1]))


async def seed(db: Db, shipped: list[Campaign], *, origin: Origin, now: datetime) -> int:
    """Store the shipped (or folder) campaigns not stored yet, or changed by a release.

    An operator's changes through the API stay, and a campaign an operator archived stays archived.
    """
    added = 0
    for campaign in shipped:
        current = await get(db, campaign.id)
        if current is None or (
            current.origin != "api" and current.status != "archived" and current.campaign != campaign
        ):
            await save(db, campaign, origin=origin, now=now)
            added += 1
    return added
