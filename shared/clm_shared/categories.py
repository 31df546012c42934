"""The one mapping from Segment call and event name to lifecycle touchpoint category (DESIGN §2)."""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    DISCOVERY = "discovery"
    ENGAGEMENT = "engagement"
    CONVERSION = "conversion"
    RETENTION = "retention"
    LOYALTY = "loyalty"
    ADVOCACY = "advocacy"
    OTHER = "other"
    # identify, alias and group change identity and traits only; they are not touchpoints.
    IDENTITY = "identity"


_TRACK_EVENTS: dict[Category, tuple[str, ...]] = {
    Category.DISCOVERY: ("Ad Impression", "Social Impression", "Podcast Listened", "Promotion Viewed"),
    Category.ENGAGEMENT: (
        "Content Viewed",
        "Email Opened",
        "Email Link Clicked",
        "Social Followed",
        "Social Shared",
        "Social Commented",
        "Social Liked",
        "Podcast Downloaded",
        "Webinar Attended",
        "Newsletter Subscribed",
        "Signed Up",
        "Account Created",
        "Trial Started",
        "Product Viewed",
        "Product Added",
        "Cart Viewed",
        "NPS Survey Answered",
    ),
    Category.CONVERSION: (
        "Checkout Started",
        "Order Completed",
        "Subscription Started",
        "Trial Converted",
        "Coupon Applied",
    ),
    Category.RETENTION: ("Subscription Renewed", "CSAT Survey Answered", "Order Refunded"),
    Category.LOYALTY: ("Loyalty Program Joined",),
    Category.ADVOCACY: ("Referral Sent", "Referral Converted", "Affiliate Sale", "Review Submitted"),
}

EVENT_CATEGORY: dict[str, Category] = {
    event: category for category, events in _TRACK_EVENTS.items() for event in events
}


def categorize(call_type: str, event: str | None = None) -> Category:
    """Category of one Segment call: page/screen are discovery, identity calls are not touchpoints."""
    if call_type in ("page", "screen"):
        return Category.DISCOVERY
    if call_type in ("identify", "alias", "group"):
        return Category.IDENTITY
    return EVENT_CATEGORY.get(event or "", Category.OTHER)
