"""Write keys: created, listed and revoked by operators; checked on every request."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.access.cache import hash_secret
from ingest.tables import write_keys

KEY_PREFIX = "clmwk_"


class KeyNameTaken(ValueError):
    pass


class UnknownKey(LookupError):
    pass


@dataclass(frozen=True)
class WriteKey:
    name: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hash_secret(key)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


async def create_key(engine: AsyncEngine, *, name: str) -> str:
    """Store a new key under a unique name; the plain key is returned once and never stored."""
    key = new_key()
    try:
        async with engine.begin() as conn:
            await conn.execute(write_keys.insert().values(name=name, key_hash=hash_key(key)))
    except IntegrityError as exc:
        raise KeyNameTaken(f"a write key named {name!r} exists already") from exc
    return key


async def list_keys(engine: AsyncEngine) -> list[WriteKey]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(write_keys.c.name, write_keys.c.created_at, write_keys.c.revoked_at).order_by(write_keys.c.id)
        )
        return [WriteKey(*row) for row in rows]


async def revoke_key(engine: AsyncEngine, *, name: str) -> None:
    async with engine.begin() as conn:
        result = await conn.execute(
            update(write_keys)
            .where(write_keys.c.name == name, write_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now().astimezone())
        )
    if result.rowcount == 0:
        raise UnknownKey(f"no active write key named {name!r}")


async def active_key_hashes(engine: AsyncEngine) -> dict[str, str]:
    """hash -> key name of every key that is not revoked."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(write_keys.c.key_hash, write_keys.c.name).where(write_keys.c.revoked_at.is_(None))
        )
        return {key_hash: name for key_hash, name in rows}
