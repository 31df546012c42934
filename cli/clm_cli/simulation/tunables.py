"""The knobs of the traffic model: where visitors come from and how likely each step of a journey is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Tunables(BaseModel):
    """Defaults give a plausible small web shop; every probability is per chance, not per customer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where a visit starts (relative weights, they need not add up to 1).
    source_ads: float = Field(0.35, ge=0, description="Weight of visits that start with an ad impression.")
    source_social: float = Field(0.25, ge=0, description="Weight of visits that start with a social post.")
    source_podcast: float = Field(0.10, ge=0, description="Weight of visits that start with a podcast episode.")
    source_content: float = Field(0.30, ge=0, description="Weight of visits that start with an article.")

    pages_per_visit: float = Field(3.0, ge=1, le=50, description="Mean page views of one visit.")
    social_engage: float = Field(0.30, ge=0, le=1, description="A visit includes a like, follow, share or comment.")
    return_visit: float = Field(0.45, ge=0, le=1, description="A visitor who did not sign up comes back.")
    sign_up: float = Field(0.30, ge=0, le=1, description="A visit ends with a sign-up.")
    newsletter: float = Field(0.35, ge=0, le=1, description="A new customer subscribes to the newsletter.")
    trial: float = Field(0.25, ge=0, le=1, description="A new customer starts a 14-day trial of the subscription.")
    trial_convert: float = Field(0.50, ge=0, le=1, description="A trial becomes a paid subscription.")
    cancel_subscription: float = Field(0.12, ge=0, le=1, description="A subscription is cancelled in a month.")
    checkout: float = Field(0.70, ge=0, le=1, description="A new customer starts a checkout.")
    abandon_cart: float = Field(0.30, ge=0, le=1, description="A started checkout is abandoned.")
    retry_checkout: float = Field(0.50, ge=0, le=1, description="After abandoning, the customer tries again.")
    coupon: float = Field(0.20, ge=0, le=1, description="A checkout applies a coupon (10% off).")
    repeat_purchase: float = Field(0.55, ge=0, le=1, description="After an order, the customer buys again.")
    csat: float = Field(0.35, ge=0, le=1, description="An order is followed by a CSAT answer.")
    nps: float = Field(0.30, ge=0, le=1, description="An order is followed by an NPS answer.")
    review: float = Field(0.20, ge=0, le=1, description="An order is followed by a product review.")
    referral: float = Field(0.12, ge=0, le=1, description="An order is followed by a referral sent to a friend.")
    referral_converts: float = Field(0.40, ge=0, le=1, description="A referred friend buys.")
    loyalty: float = Field(0.30, ge=0, le=1, description="A customer joins the loyalty programme at the third order.")
    win_back: float = Field(0.35, ge=0, le=1, description="A customer who went quiet comes back and buys.")

    repurchase_days: float = Field(21.0, gt=0, le=365, description="Mean days between one order and the next.")
    quiet_days_min: float = Field(
        125.0, ge=0, le=3650, description="Shortest silence before a win-back (the engine churns at 120 days)."
    )
    quiet_days_max: float = Field(200.0, ge=0, le=3650, description="Longest silence before a win-back.")
    max_orders: int = Field(12, ge=1, le=1000, description="Orders one customer places at most.")
    currency: str = Field("USD", min_length=3, max_length=3, description="ISO 4217 code of every price.")

    @model_validator(mode="after")
    def _consistent(self) -> Tunables:
        if self.source_ads + self.source_social + self.source_podcast + self.source_content <= 0:
            raise ValueError("at least one source_* weight must be above 0")
        if self.quiet_days_min > self.quiet_days_max:
            raise ValueError("quiet_days_min must not exceed quiet_days_max")
        return self


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """``["abandon_cart=0.4", "currency=EUR"]`` as a mapping; pydantic converts the values."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected NAME=VALUE, got {pair!r}")
        values[name.strip()] = value.strip()
    return values


def load_tunables(file: Path | None, assignments: list[str]) -> Tunables:
    """The defaults, overridden by a YAML or JSON file, then by ``NAME=VALUE`` pairs (raises ValueError)."""
    values: dict[str, Any] = {}
    if file is not None:
        loaded = yaml.safe_load(file.read_text()) or {}  # YAML reads JSON too
        if not isinstance(loaded, dict):
            raise ValueError(f"{file} must hold a mapping of tunable names to values")
        values.update(loaded)
    values.update(parse_assignments(assignments))
    return Tunables.model_validate(values)
