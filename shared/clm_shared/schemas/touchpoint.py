"""The normalized touchpoint every consumer of ``clm.touchpoints.v1`` reads."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from clm_shared.categories import Category

TOUCHPOINT_SCHEMA_VERSION: Literal[1] = 1

CallType = Literal["track", "identify", "page", "screen", "group", "alias"]


class Touchpoint(BaseModel):
    """One accepted Segment call, with server-side times and its lifecycle category."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = TOUCHPOINT_SCHEMA_VERSION
    message_id: str = Field(min_length=1)
    type: CallType
    customer_key: str = Field(min_length=1, description="userId, else anonymousId: the Kafka key.")
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = Field(None, description="Track event name; page/screen name for page and screen calls.")
    category: Category
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)
    group_id: str | None = None
    previous_id: str | None = None
    timestamp: datetime = Field(description="Event time, corrected for client clock skew.")
    original_timestamp: datetime | None = Field(None, description="The client's own timestamp.")
    sent_at: datetime | None = None
    received_at: datetime
    source: str | None = Field(None, description="Name of the write key the event came in with.")

    @property
    def revenue(self) -> float:
        """``properties.revenue``, else ``properties.total``, else 0 (DESIGN §2)."""
        return _revenue(self.properties)


def _revenue(properties: dict[str, Any]) -> float:
    for field in ("revenue", "total"):
        value = properties.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0


class TouchpointRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The same record as ``Touchpoint``, decoded by msgspec for consumers' hot paths (5-10x cheaper).

    The fields and constraints mirror ``Touchpoint`` (a test holds the two together); pydantic stays at
    the edges, where ingest validates and writes the record.
    """

    schema_version: Literal[1] = TOUCHPOINT_SCHEMA_VERSION
    message_id: Annotated[str, msgspec.Meta(min_length=1)]
    type: CallType
    customer_key: Annotated[str, msgspec.Meta(min_length=1)]
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = None
    category: Category
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    integrations: dict[str, Any] = msgspec.field(default_factory=dict)
    group_id: str | None = None
    previous_id: str | None = None
    timestamp: datetime
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    received_at: datetime
    source: str | None = None

    @property
    def revenue(self) -> float:
        return _revenue(self.properties)


# Either form of a touchpoint: what the stage rules read.
AnyTouchpoint = Touchpoint | TouchpointRecord
