"""A campaign's figures from its anonymous counters: conversion of treatment and holdout, and the uplift.

Pure, so the math is tested without a database: the consumer keeps ``campaign_counts`` and the API
reads them into :func:`campaign_stats`. Rates are fractions; a group with no members has no rate
(``None``), and then there is no uplift either, rather than a made-up 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

HELD_PREFIX = "held:"


class HoldoutStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    members: int
    converted: int
    conversion_rate: float | None


class CampaignStats(BaseModel):
    """What /v1/campaigns/{id}/stats shows: the API's model extends this one."""

    model_config = ConfigDict(frozen=True)

    entered: int
    sent: int
    failed: int
    exited: int
    completed: int
    converted: int  # orders within the window after a send: the campaign's attributed conversions
    treatment: int
    treatment_converted: int  # treated runs with an order within the window after entry
    conversion_rate: float | None  # treatment_converted / treatment, measured as the holdout's is
    holdout: HoldoutStats
    uplift: float | None  # treatment rate - holdout rate, in absolute terms (0.02 = 2 percentage points)
    relative_uplift: float | None  # uplift / holdout rate; None when the holdout did not convert at all
    held_back: dict[str, int] = Field(default_factory=dict)


def rate(part: int, whole: int) -> float | None:
    """``part / whole``, or None for an empty group."""
    return part / whole if whole > 0 else None


def campaign_stats(counts: Mapping[str, int]) -> CampaignStats:
    """The figures of one campaign from its counters (a missing counter is 0)."""

    def count(name: str) -> int:
        return max(int(counts.get(name, 0)), 0)

    entered, holdout_members = count("entered"), count("holdout")
    # entered counts holdout runs too; a counter read mid-way can never make the treatment negative.
    treatment = max(entered - holdout_members, 0)
    converted, holdout_converted = count("converted"), count("holdout_converted")
    # both groups measured alike, from entry: treated runs never sent to (capped, exited) count too
    treatment_converted = count("treatment_converted")
    treatment_rate = rate(treatment_converted, treatment)
    holdout_rate = rate(holdout_converted, holdout_members)
    uplift = None if treatment_rate is None or holdout_rate is None else treatment_rate - holdout_rate
    relative = None if uplift is None or not holdout_rate else uplift / holdout_rate
    held_back = {
        name.removeprefix(HELD_PREFIX): value
        for name, value in sorted(counts.items())
        if name.startswith(HELD_PREFIX) and value > 0
    }
    return CampaignStats(
        entered=entered,
        sent=count("sent"),
        failed=count("failed"),
        exited=count("exited"),
        completed=count("completed"),
        converted=converted,
        treatment=treatment,
        treatment_converted=treatment_converted,
        conversion_rate=treatment_rate,
        holdout=HoldoutStats(members=holdout_members, converted=holdout_converted, conversion_rate=holdout_rate),
        uplift=uplift,
        relative_uplift=relative,
        held_back=held_back,
    )
