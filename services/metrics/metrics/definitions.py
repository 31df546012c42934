"""The metrics the API serves: name, stage, kind and the one-line definition (``docs/metrics.md`` has examples)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["count", "ratio", "money", "score"]


@dataclass(frozen=True)
class Metric:
    name: str
    stage: str
    kind: Kind
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "social_impressions", "discovery", "count", "Sum of properties.impressions (default 1), Social Impression."
        ),
        Metric("page_views", "discovery", "count", "Page calls."),
        Metric("unique_visitors", "discovery", "count", "Distinct customers with a page call."),
        Metric("podcast_listeners", "discovery", "count", "Distinct customers with Podcast Listened."),
        Metric("social_follows", "engagement", "count", "Social Followed events."),
        Metric("social_comments", "engagement", "count", "Social Commented events."),
        Metric("social_shares", "engagement", "count", "Social Shared events."),
        Metric("social_likes", "engagement", "count", "Social Liked events."),
        Metric("podcast_downloads", "engagement", "count", "Podcast Downloaded events."),
        Metric(
            "nps", "engagement", "score", "100 x (promoters 9-10 - detractors 0-6) / respondents, latest answer each."
        ),
        Metric(
            "trial_to_paid_rate",
            "conversion",
            "ratio",
            "Of customers with Trial Started, the share with Trial Converted or Subscription Started within 30 days.",
        ),
        Metric(
            "cart_abandonment_rate",
            "conversion",
            "ratio",
            "Of Checkout Started, the share not followed within 24 h by an Order Completed (same checkout_id).",
        ),
        Metric("average_order_value", "conversion", "money", "Revenue / number of Order Completed."),
        Metric(
            "churn_rate",
            "retention",
            "ratio",
            "Of the converted, not-churned customers at the window's start, the share who became churned in it.",
        ),
        Metric(
            "repeat_purchase_rate",
            "retention",
            "ratio",
            "Customers with 2+ orders / customers with 1+ order, lifetime as of the window's end.",
        ),
        Metric(
            "customer_retention_rate",
            "retention",
            "ratio",
            "(E - N) / S: converted, not-churned customers at start (S) and end (E); N of E converted in the window.",
        ),
        Metric(
            "clv_historical", "loyalty", "money", "Mean lifetime revenue of converted customers at the window's end."
        ),
        Metric("csat", "loyalty", "ratio", "Share of CSAT Survey Answered scored 4-5."),
        Metric(
            "referral_rate",
            "advocacy",
            "ratio",
            "Distinct customers with Referral Sent / customers at conversion or beyond at the window's end.",
        ),
        Metric("affiliate_revenue", "advocacy", "money", "Revenue of Affiliate Sale."),
    )
}
