"""Segment HTTP Tracking API calls, field by field, so Segment and RudderStack SDKs work unchanged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_MESSAGE_ID_LENGTH = 99  # Segment rejects a messageId of 100 characters or more.
MAX_BATCH_EVENTS = 2500


def _assume_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# ISO 8601; a time without an offset is taken as UTC, as Segment does.
Timestamp = Annotated[datetime, AfterValidator(_assume_utc)]

# Segment SDKs send ids as strings, but some backends send numbers: keep them, as text.
Id = Annotated[str | None, Field(default=None, max_length=1024)]


def _id_to_text(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a string, not a boolean")
    if isinstance(value, int | float):
        return str(value)
    return value


class SegmentCall(BaseModel):
    """Fields every call has; ``receivedAt`` is always the server's, never the client's."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", str_strip_whitespace=False)

    type: str
    message_id: str | None = Field(None, alias="messageId", min_length=1, max_length=MAX_MESSAGE_ID_LENGTH)
    user_id: Id = Field(None, alias="userId")
    anonymous_id: Id = Field(None, alias="anonymousId", validate_default=True)
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)
    timestamp: Timestamp | None = None
    sent_at: Timestamp | None = Field(None, alias="sentAt")
    write_key: str | None = Field(None, alias="writeKey", exclude=True)

    @field_validator("user_id", "anonymous_id", mode="before")
    @classmethod
    def _ids_as_text(cls, value: Any) -> Any:
        return _id_to_text(value)

    @field_validator("user_id")
    @classmethod
    def _empty_user_id_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("anonymous_id")
    @classmethod
    def _needs_an_identity(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Runs after user_id (fields validate in order), so the error can name the missing field.
        if not value and not info.data.get("user_id"):
            raise ValueError("userId or anonymousId is required")
        return value or None

    @property
    def customer_key(self) -> str:
        """The Kafka key: userId, else anonymousId, so a customer's events stay on one partition."""
        return self.user_id or self.anonymous_id or ""


class TrackCall(SegmentCall):
    type: Literal["track"] = "track"
    event: str = Field(min_length=1, max_length=1024)
    properties: dict[str, Any] = Field(default_factory=dict)


class IdentifyCall(SegmentCall):
    type: Literal["identify"] = "identify"
    traits: dict[str, Any] = Field(default_factory=dict)


class PageCall(SegmentCall):
    type: Literal["page"] = "page"
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class ScreenCall(SegmentCall):
    type: Literal["screen"] = "screen"
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class GroupCall(SegmentCall):
    type: Literal["group"] = "group"
    group_id: str = Field(alias="groupId", min_length=1, max_length=1024)
    traits: dict[str, Any] = Field(default_factory=dict)

    @field_validator("group_id", mode="before")
    @classmethod
    def _group_id_as_text(cls, value: Any) -> Any:
        return _id_to_text(value)


class AliasCall(SegmentCall):
    type: Literal["alias"] = "alias"
    previous_id: str = Field(alias="previousId", min_length=1, max_length=1024)

    @field_validator("previous_id", mode="before")
    @classmethod
    def _previous_id_as_text(cls, value: Any) -> Any:
        return _id_to_text(value)


AnyCall = Annotated[
    TrackCall | IdentifyCall | PageCall | ScreenCall | GroupCall | AliasCall,
    Field(discriminator="type"),
]

CALL_MODELS: dict[str, type[SegmentCall]] = {
    "track": TrackCall,
    "identify": IdentifyCall,
    "page": PageCall,
    "screen": ScreenCall,
    "group": GroupCall,
    "alias": AliasCall,
}


class BatchCall(BaseModel):
    """``/v1/batch``: each item carries its own ``type``; top-level context and integrations apply to all."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    batch: list[AnyCall] = Field(max_length=MAX_BATCH_EVENTS)
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)
    sent_at: Timestamp | None = Field(None, alias="sentAt")
    write_key: str | None = Field(None, alias="writeKey", exclude=True)
