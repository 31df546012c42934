"""API tokens for tests, stored the way `clm tokens create` stores them."""

from __future__ import annotations

import uuid

from fastapi import FastAPI

from clm_shared.access.tokens import Role, access_engine, create_token


async def create_api_token(app: FastAPI, role: Role = Role.ADMIN, *, name: str | None = None) -> str:
    """A new token in the access schema of a running app (inside its lifespan)."""
    ctx = app.state.ctx
    name = name or f"test-{role.value}-{uuid.uuid4().hex[:8]}"
    return await create_token(access_engine(ctx.engine, ctx.settings), name=name, role=role)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
