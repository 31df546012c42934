from __future__ import annotations

import pytest

from clm_shared.categories import EVENT_CATEGORY, Category, categorize

DESIGN_TABLE = {
    Category.DISCOVERY: ["Ad Impression", "Social Impression", "Podcast Listened", "Promotion Viewed"],
    Category.ENGAGEMENT: [
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
    ],
    Category.CONVERSION: [
        "Checkout Started",
        "Order Completed",
        "Subscription Started",
        "Trial Converted",
        "Coupon Applied",
    ],
    Category.RETENTION: ["Subscription Renewed", "CSAT Survey Answered", "Order Refunded"],
    Category.LOYALTY: ["Loyalty Program Joined"],
    Category.ADVOCACY: ["Referral Sent", "Referral Converted", "Affiliate Sale", "Review Submitted"],
}


@pytest.mark.parametrize(("category", "event"), [(c, e) for c, events in DESIGN_TABLE.items() for e in events])
def test_every_design_event_has_its_category(category: Category, event: str) -> None:
    assert categorize("track", event) is category


def test_the_mapping_holds_nothing_beyond_the_design_table() -> None:
    assert len(EVENT_CATEGORY) == sum(len(events) for events in DESIGN_TABLE.values())


@pytest.mark.parametrize("call", ["page", "screen"])
def test_page_and_screen_calls_are_discovery(call: str) -> None:
    assert categorize(call, "Home") is Category.DISCOVERY


@pytest.mark.parametrize("call", ["identify", "alias", "group"])
def test_identity_calls_are_not_touchpoints(call: str) -> None:
    assert categorize(call) is Category.IDENTITY


def test_unknown_and_differently_cased_events_are_other() -> None:
    assert categorize("track", "Something Else") is Category.OTHER
    assert categorize("track", "order completed") is Category.OTHER
    assert categorize("track", "Subscription Cancelled") is Category.OTHER
