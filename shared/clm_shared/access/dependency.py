"""The one dependency every service's routes share: ``Authorization: Bearer <API token>``, role by method."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clm_shared.access.cache import SecretHashes, SecretsUnavailable
from clm_shared.access.tokens import TOKEN_PREFIX, Caller, Role

# Reading needs a read token; anything that changes or erases needs an admin token.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_bearer = HTTPBearer(auto_error=False, description="An API token (`clm tokens create`), role read or admin.")


@dataclass
class Access:
    """What the dependency checks against, built once in the service's lifespan."""

    tokens: SecretHashes[Caller]
    admin_token: str | None = None


def _unauthorized(message: str, error: str | None = None) -> HTTPException:
    # Never echo the presented token: the message is fixed text.
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return HTTPException(401, message, headers={"WWW-Authenticate": challenge})


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """The caller behind a valid token whose role allows this request's method; 401, 403 or 503 otherwise."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("an API token is needed: Authorization: Bearer <token>")
    access: Access = request.app.state.access
    token = credentials.credentials.strip()
    caller: Caller | None = None
    admin = access.admin_token
    if admin is not None and hmac.compare_digest(token.encode(), admin.encode()):
        caller = Caller("admin-token", Role.ADMIN)
    elif token.startswith(TOKEN_PREFIX):  # write keys and anything else never reach the database
        try:
            caller = await access.tokens.lookup(token)
        except SecretsUnavailable as exc:
            raise HTTPException(
                503, "tokens cannot be checked now; retry later", headers={"Retry-After": str(exc.retry_after_s)}
            ) from None
    if caller is None:
        raise _unauthorized("unknown or revoked API token", "invalid_token")
    needed = Role.READ if request.method in READ_METHODS else Role.ADMIN
    if not caller.role.allows(needed):
        raise HTTPException(403, f"{request.method} needs an admin token; this one is read-only")
    return caller


CurrentCaller = Annotated[Caller, Depends(require_token)]
