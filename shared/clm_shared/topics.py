"""Topic names: versioned, in one place, optionally namespaced per deployment or test run."""

from __future__ import annotations

from dataclasses import dataclass

TOUCHPOINTS = "clm.touchpoints.v1"
STAGE_CHANGES = "clm.stage-changes.v1"
CAMPAIGN_EVENTS = "clm.campaign-events.v1"
TOUCHPOINTS_DLQ = "clm.touchpoints.dlq.v1"
STAGE_CHANGES_DLQ = "clm.stage-changes.dlq.v1"


@dataclass(frozen=True)
class Topics:
    """The platform's topics under one namespace prefix ("" in production)."""

    namespace: str = ""

    @property
    def touchpoints(self) -> str:
        return self.namespace + TOUCHPOINTS

    @property
    def stage_changes(self) -> str:
        return self.namespace + STAGE_CHANGES

    @property
    def campaign_events(self) -> str:
        return self.namespace + CAMPAIGN_EVENTS

    @property
    def touchpoints_dlq(self) -> str:
        return self.namespace + TOUCHPOINTS_DLQ

    @property
    def stage_changes_dlq(self) -> str:
        return self.namespace + STAGE_CHANGES_DLQ

    def all(self) -> list[str]:
        return [
            self.touchpoints,
            self.stage_changes,
            self.campaign_events,
            self.touchpoints_dlq,
            self.stage_changes_dlq,
        ]
