"""API tokens: created, listed and revoked by operators (`clm tokens`); checked by every service."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_shared.access.cache import hash_secret
from clm_shared.access.tables import ACCESS_SCHEMA, access_schema, api_tokens
from clm_shared.migrations import apply_migrations
from clm_shared.settings import Settings

# Distinct from write keys (clmwk_), so each side refuses the other's secrets without a lookup.
TOKEN_PREFIX = "clmtk_"
MIGRATIONS = Path(__file__).parent / "migrations"
ADMIN_TOKEN_FILE = "admin-token"


class Role(StrEnum):
    READ = "read"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return self is Role.ADMIN or needed is Role.READ


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role


@dataclass(frozen=True)
class ApiToken:
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


class TokenNameTaken(ValueError):
    pass


class UnknownToken(LookupError):
    pass


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def access_engine(engine: AsyncEngine, settings: Settings) -> AsyncEngine:
    """The same engine and pool, with the tokens table in this deployment's access schema."""
    return engine.execution_options(schema_translate_map={ACCESS_SCHEMA: access_schema(settings)})


async def migrate_access(engine: AsyncEngine, settings: Settings) -> None:
    """Create or upgrade the access schema (any service, `clm migrate` and `clm tokens` may do it)."""
    await apply_migrations(engine, script_location=MIGRATIONS, schema=access_schema(settings))


async def create_token(engine: AsyncEngine, *, name: str, role: Role) -> str:
    """Store a new token under a unique name; the plain token is returned once and never stored."""
    token = new_token()
    try:
        async with engine.begin() as conn:
            await conn.execute(api_tokens.insert().values(name=name, role=role.value, token_hash=hash_secret(token)))
    except IntegrityError:
        raise TokenNameTaken(f"an API token named {name!r} exists already") from None
    return token


async def list_tokens(engine: AsyncEngine) -> list[ApiToken]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(api_tokens.c.name, api_tokens.c.role, api_tokens.c.created_at, api_tokens.c.revoked_at).order_by(
                api_tokens.c.id
            )
        )
        return [ApiToken(name, Role(role), created, revoked) for name, role, created, revoked in rows]


async def revoke_token(engine: AsyncEngine, *, name: str) -> None:
    async with engine.begin() as conn:
        result = await conn.execute(
            update(api_tokens)
            .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now().astimezone())
        )
    if result.rowcount == 0:
        raise UnknownToken(f"no active API token named {name!r}")


async def active_token_hashes(engine: AsyncEngine) -> dict[str, Caller]:
    """hash -> caller of every token that is not revoked."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(api_tokens.c.token_hash, api_tokens.c.name, api_tokens.c.role).where(
                api_tokens.c.revoked_at.is_(None)
            )
        )
        return {token_hash: Caller(name, Role(role)) for token_hash, name, role in rows}


def admin_token_of(settings: Settings) -> str | None:
    """``CLM_ADMIN_TOKEN``, else the one `clm up` generated into ``<data_dir>/admin-token``, else None."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    try:
        return (settings.data_dir / ADMIN_TOKEN_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
