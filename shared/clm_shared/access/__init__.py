"""Access to the services' HTTP APIs: API tokens with a role, checked by one shared dependency."""

from clm_shared.access.cache import SecretHashes, SecretsUnavailable, hash_secret
from clm_shared.access.dependency import Access, CurrentCaller, require_token
from clm_shared.access.tables import access_schema
from clm_shared.access.tokens import TOKEN_PREFIX, Caller, Role

__all__ = [
    "TOKEN_PREFIX",
    "Access",
    "Caller",
    "CurrentCaller",
    "Role",
    "SecretHashes",
    "SecretsUnavailable",
    "access_schema",
    "hash_secret",
    "require_token",
]
