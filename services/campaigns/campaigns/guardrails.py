"""The guardrails every send passes: holdout, A/B assignment, quiet hours, frequency cap.

Pure and deterministic: the same customer, campaign and times give the same answer live, in a
replay and on another instance, which is what makes replays equal to live decisions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clm_shared.settings import Settings

UTC_ZONE = ZoneInfo("UTC")


def unit_hash(*parts: str) -> float:
    """A stable number in [0, 1) from strings (not Python's per-process ``hash``)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(customer_id: str, campaign_id: str, percent: float) -> bool:
    return unit_hash("holdout", campaign_id, customer_id) * 100 < percent


def assign_variant(customer_id: str, campaign_id: str, weights: dict[str, int]) -> str:
    """Weighted and deterministic; independent of the holdout draw (another hash)."""
    point = unit_hash("variant", campaign_id, customer_id) * sum(weights.values())
    for name, weight in weights.items():
        point -= weight
        if point < 0:
            return name
    return next(reversed(weights))


def zone_of(timezone: str | None) -> ZoneInfo:
    """The customer's timezone trait, else UTC (also for a name no tz database knows)."""
    if not timezone:
        return UTC_ZONE
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC_ZONE


@dataclass(frozen=True)
class QuietHours:
    """Local ``start``-``end``; spans midnight when start > end (21:00-08:00)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        if not text.strip():
            return None
        try:
            start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
        except ValueError as exc:
            raise ValueError(f"quiet hours must look like 21:00-08:00, got {text!r}") from exc
        return cls(start, end)

    def contains(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def release(self, due: datetime, timezone: str | None) -> datetime:
        """``due`` itself outside quiet hours, else the end of these quiet hours (in UTC if ``due`` was)."""
        zone = zone_of(timezone)
        local = due.astimezone(zone)
        if not self.contains(local.timetz().replace(tzinfo=None)):
            return due
        # the first end after ``due`` as an instant: datetimes of one zone compare by wall time, which is wrong
        # in the hour a DST change repeats (fold=1 is its second occurrence); a wall time in a DST gap does not
        # exist, and fold=0 reads it with the offset before the change, which lands after the gap
        for day in (local.date(), local.date() + timedelta(days=1)):
            for fold in (0, 1):
                end = datetime.combine(day, self.end.replace(fold=fold), tzinfo=zone)
                if end.astimezone(UTC_ZONE) > due.astimezone(UTC_ZONE):
                    return end.astimezone(due.tzinfo)
        return end.astimezone(due.tzinfo)  # not reached: the next day's end is always later


@dataclass(frozen=True)
class Guardrails:
    """The service-wide settings of the guardrails."""

    frequency_cap: int = 3
    frequency_window: timedelta = timedelta(days=7)
    quiet_hours: QuietHours | None = QuietHours(time(21), time(8))
    holdout_percent: float = 10.0
    max_trigger_age: timedelta = timedelta(hours=24)
    attribution_window: timedelta = timedelta(days=7)

    @classmethod
    def from_settings(cls, settings: Settings) -> Guardrails:
        return cls(
            frequency_cap=settings.campaigns_frequency_cap,
            frequency_window=settings.campaigns_frequency_window,
            quiet_hours=QuietHours.parse(settings.campaigns_quiet_hours),
            holdout_percent=settings.campaigns_holdout_percent,
            max_trigger_age=settings.campaigns_max_trigger_age,
            attribution_window=settings.campaigns_attribution_window,
        )
