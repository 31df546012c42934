"""The API tokens table, in the ``access`` schema that clm_shared owns (every service reads it)."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, DateTime, Integer, MetaData, String, Table, func

from clm_shared.settings import Settings

# Tables are declared in this placeholder schema; ``access_engine`` maps it to the namespaced one.
ACCESS_SCHEMA = "access"

metadata = MetaData()

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("role", String(10), CheckConstraint("role IN ('read', 'admin')"), nullable=False),
    # sha256 of the token: tokens are random 192-bit strings, so a slow hash buys nothing.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    schema=ACCESS_SCHEMA,
)


def access_schema(settings: Settings) -> str:
    """The schema of the tokens, namespaced like the services' schemas."""
    return settings.schema_namespace + ACCESS_SCHEMA
