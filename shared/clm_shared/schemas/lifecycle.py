"""Stages, health states and the data of the lifecycle events on ``clm.stage-changes.v1``."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

LIFECYCLE_SCHEMA_VERSION = 1


class Stage(StrEnum):
    """Ordered: a customer only ever moves to a later stage."""

    DISCOVERY = "discovery"
    ENGAGEMENT = "engagement"
    CONVERSION = "conversion"
    RETENTION = "retention"
    LOYALTY = "loyalty"
    ADVOCACY = "advocacy"

    @property
    def rank(self) -> int:
        return _RANK[self]


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)
_RANK = {stage: index for index, stage in enumerate(STAGE_ORDER)}


class Health(StrEnum):
    ACTIVE = "active"
    AT_RISK = "at_risk"
    CHURNED = "churned"
    REACTIVATED = "reactivated"


class EventType(StrEnum):
    """CloudEvents ``type`` values of the lifecycle and campaign topics."""

    STAGE_CHANGED = "clm.stage.changed"
    HEALTH_CHANGED = "clm.health.changed"
    CUSTOMER_MERGED = "clm.customer.merged"
    CUSTOMER_ERASED = "clm.customer.erased"
    CAMPAIGN_SENT = "clm.campaign.sent"
    CAMPAIGN_FAILED = "clm.campaign.failed"
    CAMPAIGN_CONVERTED = "clm.campaign.converted"


# What a subscriber of ``clm.stage-changes.v1`` accepts; campaign events join when campaigns publish them.
LIFECYCLE_EVENT_TYPES: frozenset[str] = frozenset(
    {EventType.STAGE_CHANGED, EventType.HEALTH_CHANGED, EventType.CUSTOMER_MERGED, EventType.CUSTOMER_ERASED}
)
CAMPAIGN_EVENT_TYPES: frozenset[str] = frozenset(
    {EventType.CAMPAIGN_SENT, EventType.CAMPAIGN_FAILED, EventType.CAMPAIGN_CONVERTED}
)


class _ChangeData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = LIFECYCLE_SCHEMA_VERSION
    customer_id: str


class StageChanged(_ChangeData):
    from_stage: Stage | None = Field(description="None for a customer not seen before.")
    to_stage: Stage
    skipped: list[Stage] = Field(default_factory=list, description="Stages passed through on the way.")
    rule: str
    message_id: str | None = Field(description="The touchpoint that caused the change.")
    event_time: datetime


class HealthChanged(_ChangeData):
    from_health: Health | None
    to_health: Health
    rule: str
    message_id: str | None = Field(None, description="None when an inactivity timer caused it.")
    event_time: datetime


class CustomerMerged(_ChangeData):
    merged_id: str = Field(description="The profile that was merged into customer_id and no longer exists.")
    message_id: str
    event_time: datetime


class CustomerErased(_ChangeData):
    erased_at: datetime


class _CampaignData(_ChangeData):
    campaign_id: str
    version: int
    run_id: int


class CampaignSent(_CampaignData):
    message_id: int = Field(description="The campaigns service's message row: one per send.")
    step: str
    channel: str
    variant: str | None
    sent_at: datetime


class CampaignFailed(_CampaignData):
    message_id: int
    step: str
    channel: str
    attempts: int
    error: str = Field(description="What went wrong, with no address or secret in it.")
    failed_at: datetime


class CampaignConverted(_CampaignData):
    order_message_id: str = Field(description="The `Order Completed` touchpoint credited to the campaign.")
    revenue: float
    event_time: datetime
