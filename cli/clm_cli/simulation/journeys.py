"""A shop's visitors and customers as Segment calls: a pure, seeded model of traffic for `clm simulate`.

No I/O and no clock: ``simulate`` takes a ``random.Random``, the tunables, the customer count, the
days and ``now``, and returns the calls in time order, so one seed always gives the same traffic
(message ids included, so sending it twice changes nothing downstream).

Each customer walks one journey: visits that start from an ad, a social post, a podcast or an
article; maybe a sign-up (``identify`` with both ids, which merges the anonymous visitor); maybe a
trial and a subscription; checkouts that are abandoned or completed; surveys, reviews, referrals
and the loyalty programme after orders; buying again, or going quiet and perhaps coming back.
Follow-ups that run beside the main path (a survey days after an order, a subscription's
renewals) are branches with their own clock; a customer's calls are sorted at the end.
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clm_cli.simulation import catalog
from clm_cli.simulation.scores import csat_score, nps_score, review_rating
from clm_cli.simulation.tunables import Tunables

Call = dict[str, Any]
MAX_VISITS = 8  # before signing up; a visitor who keeps coming back without signing up stops here
MAX_CHECKOUT_TRIES = 3


class _PastNow(Exception):
    """The journey's clock passed ``now``: the rest of it has not happened yet."""


@dataclass
class Journey:
    """One customer's calls (in time order) and what happened to them that the calls alone do not say."""

    calls: list[Call]
    went_quiet: bool = False
    came_back: bool = False


@dataclass(frozen=True)
class Traffic:
    calls: list[Call]
    journeys: list[Journey]


@dataclass
class _Person:
    """The ids and calls a journey and its branches share."""

    anonymous_id: str
    user_id: str | None
    message_prefix: str
    now: datetime
    calls: list[tuple[datetime, Call]] = field(default_factory=list)


class _Path:
    """A clock that only moves forward and emits calls at its time; ``branch`` starts another from here."""

    def __init__(self, person: _Person, rng: random.Random, at: datetime) -> None:
        self.person, self.rng, self.at = person, rng, at

    def branch(self, work: Callable[[_Path], None]) -> None:
        """Run ``work`` on a clock of its own that starts now; reaching ``now`` ends only the branch."""
        with contextlib.suppress(_PastNow):
            work(_Path(self.person, self.rng, self.at))

    def wait(self, *, days: float = 0, hours: float = 0, minutes: float = 0) -> None:
        self.at += timedelta(days=days, hours=hours, minutes=minutes)
        if self.at > self.person.now:
            raise _PastNow

    def pause(self) -> None:
        """The seconds to a minute or two between clicks."""
        self.wait(minutes=self.rng.uniform(0.1, 2.5))

    def track(self, event: str, properties: dict[str, Any], context: dict[str, Any] | None = None) -> None:
        self._emit({"type": "track", "event": event, "properties": properties}, context)

    def page(self, name: str, path: str, context: dict[str, Any] | None = None) -> None:
        properties = {"title": f"{name} | Bean There", "path": path, "url": catalog.SITE + path}
        self._emit({"type": "page", "name": name, "properties": properties}, context)

    def identify(self, traits: dict[str, Any]) -> None:
        self._emit({"type": "identify", "traits": traits}, None)

    def _emit(self, call: Call, context: dict[str, Any] | None) -> None:
        person = self.person
        call["messageId"] = f"{person.message_prefix}-{len(person.calls)}"
        call["anonymousId"] = person.anonymous_id
        if person.user_id is not None:
            call["userId"] = person.user_id
        call["timestamp"] = _iso(self.at)
        if context:
            call["context"] = context
        person.calls.append((self.at, call))


def _iso(at: datetime) -> str:
    # One fixed format (UTC, milliseconds) so the texts sort as the instants do.
    return at.astimezone(UTC).isoformat(timespec="milliseconds")


def call_time(call: Call) -> str:
    """The sort key of a generated call: its timestamp text."""
    return str(call["timestamp"])


def simulate(rng: random.Random, tunables: Tunables, *, customers: int, days: float, now: datetime) -> Traffic:
    """``customers`` journeys that start within the ``days`` before ``now``; every call falls in that window."""
    if customers < 0 or days <= 0:
        raise ValueError("customers must be >= 0 and days > 0")
    run = f"{rng.getrandbits(32):08x}"  # in every id, so two seeds never share customers or message ids
    start = now - timedelta(days=days)
    journeys = []
    for index in range(customers):
        # A generator per customer: one customer's choices never shift another's.
        own = random.Random(rng.getrandbits(64))
        arrival = start + (now - start) * own.random()
        journeys.append(_journey(own, tunables, run, index, arrival, now))
    calls = list(heapq.merge(*(journey.calls for journey in journeys), key=call_time))
    return Traffic(calls, journeys)


def _journey(rng: random.Random, t: Tunables, run: str, index: int, arrival: datetime, now: datetime) -> Journey:
    person = _Person(f"anon-{run}-{index}", None, f"sim-{run}-{index}", now)
    journey = Journey([])
    path = _Path(person, rng, arrival)
    with contextlib.suppress(_PastNow):  # the rest of the journey lies in the future
        if _visits_until_sign_up(path, t):
            _sign_up(path, t, index)
            if rng.random() < t.trial:
                path.branch(lambda branch: _trial(branch, t))
            if rng.random() < t.checkout:
                path.wait(days=rng.expovariate(1 / 3))
                _shopping(path, t, journey)
    person.calls.sort(key=lambda timed: timed[0])  # stable: calls at one instant keep their order
    journey.calls = [call for _, call in person.calls]
    return journey


def _visits_until_sign_up(path: _Path, t: Tunables) -> bool:
    """Visits from ads, social, podcasts and articles; True once the visitor signs up."""
    rng = path.rng
    for _ in range(MAX_VISITS):
        _visit(path, t)
        if rng.random() < t.sign_up:
            return True
        if rng.random() >= t.return_visit:
            return False
        path.wait(days=rng.expovariate(1 / 4))
    return False


def _visit(path: _Path, t: Tunables) -> None:
    rng = path.rng
    weights = (t.source_ads, t.source_social, t.source_podcast, t.source_content)
    source = rng.choices(("ads", "social", "podcast", "content"), weights=weights)[0]
    context: dict[str, Any] | None = None
    if source == "ads":
        ad = rng.choice(catalog.AD_CAMPAIGNS)
        ad_id = f"ad-{ad.name}-{rng.randint(1, 4)}"
        context = {"campaign": {"name": ad.name, "source": ad.source, "medium": ad.medium, "content": ad_id}}
        placement = rng.choice(catalog.AD_PLACEMENTS)
        path.track("Ad Impression", {"ad_id": ad_id, "placement": placement, "campaign": ad.name}, context)
    elif source == "social":
        platform = rng.choice(catalog.SOCIAL_PLATFORMS)
        context = {"campaign": {"name": "organic-social", "source": platform, "medium": "social"}}
        post = f"post-{rng.randint(1, 40)}"
        path.track("Social Impression", {"platform": platform, "post_id": post, "impressions": rng.randint(1, 3)})
        if rng.random() < t.social_engage:
            path.pause()
            path.track(rng.choice(catalog.SOCIAL_ACTIONS), {"platform": platform, "post_id": post})
    elif source == "podcast":
        context = {"campaign": {"name": "podcast-mention", "source": "podcast", "medium": "audio"}}
        episode = {"podcast": catalog.PODCAST, "episode": rng.randint(1, 60)}
        path.track("Podcast Listened", {**episode, "seconds": rng.randint(60, 2400)})
        if rng.random() < 0.3:
            path.track("Podcast Downloaded", episode)
    path.wait(minutes=rng.uniform(0.5, 30))
    if source == "content":
        slug, title = rng.choice(catalog.ARTICLES)
        path.page("Blog", f"/blog/{slug}")
        path.track("Content Viewed", {"content_id": slug, "title": title, "type": "article"})
    pages = 1 + int(rng.expovariate(1 / max(t.pages_per_visit - 1, 1e-9))) if t.pages_per_visit > 1 else 1
    for _ in range(pages):
        path.pause()
        name, where = rng.choice(catalog.PAGES)
        path.page(name, where, context)
    for product in rng.sample(catalog.PRODUCTS, rng.randint(0, 2)):
        path.pause()
        path.track("Product Viewed", _product(product), context)
    if source != "social" and rng.random() < t.social_engage / 2:  # people who came another way follow too
        path.track(rng.choice(catalog.SOCIAL_ACTIONS), {"platform": rng.choice(catalog.SOCIAL_PLATFORMS)})


def _sign_up(path: _Path, t: Tunables, index: int) -> None:
    rng = path.rng
    path.pause()
    person = path.person
    person.user_id = person.anonymous_id.replace("anon-", "user-", 1)
    name = rng.choice(catalog.FIRST_NAMES)
    traits = {
        "email": f"{name.lower()}.{index}@example.com",  # a reserved domain: mail to it goes nowhere
        "first_name": name,
        "created_at": _iso(path.at),
        "timezone": rng.choice(("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC")),
    }
    path.identify(traits)  # both ids in one call: the platform merges the visitor into the customer
    path.track("Signed Up", {"method": rng.choice(catalog.SIGN_UP_METHODS)})
    if rng.random() < t.newsletter:
        path.pause()
        path.track("Newsletter Subscribed", {"list": "weekly-brew"})


def _trial(path: _Path, t: Tunables) -> None:
    rng = path.rng
    plan, price = rng.choice(catalog.SUBSCRIPTION_PLANS)
    path.pause()
    path.track("Trial Started", {"plan": plan, "trial_days": catalog.TRIAL_DAYS})
    path.wait(days=catalog.TRIAL_DAYS)
    if rng.random() >= t.trial_convert:
        return
    subscription = {"plan": plan, "revenue": price, "currency": t.currency}
    path.track("Trial Converted", {"plan": plan})
    path.track("Subscription Started", subscription)
    while True:
        path.wait(days=30)
        if rng.random() < t.cancel_subscription:
            path.track("Subscription Cancelled", {"plan": plan, "reason": rng.choice(("price", "too much coffee"))})
            return
        path.track("Subscription Renewed", subscription)


def _shopping(path: _Path, t: Tunables, journey: Journey) -> None:
    """Orders until the customer goes quiet for good (or ``now``); a win-back starts the round again."""
    rng = path.rng
    orders = 0
    context: dict[str, Any] | None = None
    while orders < t.max_orders:
        order = _checkout(path, t, context)
        if order is None:
            return
        orders += 1
        path.branch(lambda branch: _after_order(branch, t, order, orders))  # noqa: B023 (runs at once)
        if rng.random() < t.repeat_purchase:
            path.wait(days=rng.expovariate(1 / t.repurchase_days))
            context = None
            continue
        journey.went_quiet = True
        if rng.random() >= t.win_back:
            return
        path.wait(days=rng.uniform(t.quiet_days_min, t.quiet_days_max))
        campaign = catalog.WIN_BACK
        context = {"campaign": {"name": campaign.name, "source": campaign.source, "medium": campaign.medium}}
        path.track("Email Opened", {"campaign": campaign.name}, context)
        path.wait(minutes=rng.uniform(1, 600))
        path.track("Email Link Clicked", {"campaign": campaign.name, "url": catalog.SITE + "/shop"}, context)
        journey.came_back = True


def _checkout(path: _Path, t: Tunables, context: dict[str, Any] | None) -> dict[str, Any] | None:
    """Cart, checkout and the order's properties; None when every try was abandoned."""
    rng = path.rng
    for _ in range(MAX_CHECKOUT_TRIES):
        path.pause()
        chosen = rng.sample(catalog.PRODUCTS, rng.choices((1, 2, 3), weights=(6, 3, 1))[0])
        products = [{**_product(p), "quantity": rng.choices((1, 2), weights=(4, 1))[0]} for p in chosen]
        for product in products:
            path.track("Product Viewed", _product_only(product), context)
            path.pause()
            path.track("Product Added", product, context)
        path.pause()
        checkout_id = f"chk-{path.person.message_prefix}-{len(path.person.calls)}"
        revenue = round(sum(p["price"] * p["quantity"] for p in products), 2)
        path.track("Cart Viewed", {"cart_id": checkout_id, "products": products}, context)
        cart = {"checkout_id": checkout_id, "revenue": revenue, "currency": t.currency, "products": products}
        path.pause()
        path.track("Checkout Started", cart, context)
        if rng.random() < t.abandon_cart:
            if rng.random() >= t.retry_checkout:
                return None
            path.wait(hours=rng.uniform(2, 96))
            continue
        if rng.random() < t.coupon:
            path.pause()
            path.track("Coupon Applied", {"checkout_id": checkout_id, "coupon_id": "BREW10", "discount": 0.1})
            revenue = round(revenue * 0.9, 2)
        path.wait(minutes=rng.uniform(1, 10))
        order = {**cart, "order_id": "o-" + checkout_id.removeprefix("chk-"), "revenue": revenue, "total": revenue}
        path.track("Order Completed", order, context)
        return order
    return None


def _after_order(path: _Path, t: Tunables, order: dict[str, Any], orders: int) -> None:
    """Surveys, a review, a referral and the loyalty programme, days after an order (a branch of its own)."""
    rng = path.rng
    if rng.random() < t.csat:
        path.wait(days=rng.uniform(1, 4))
        path.track("CSAT Survey Answered", {"score": csat_score(rng), "order_id": order["order_id"]})
    if rng.random() < t.review:
        path.wait(days=rng.uniform(2, 10))
        product = order["products"][0]["product_id"]
        review = {"review_id": "r-" + order["order_id"], "product_id": product, "rating": review_rating(rng)}
        path.track("Review Submitted", review)
    if rng.random() < t.nps:
        path.wait(days=rng.uniform(3, 14))
        path.track("NPS Survey Answered", {"score": nps_score(rng), "survey_id": "nps-quarterly"})
    if orders == 3 and rng.random() < t.loyalty:
        path.wait(days=rng.uniform(0, 2))
        path.track("Loyalty Program Joined", {"program": "Bean Counters", "tier": "silver"})
    if rng.random() < t.referral:
        path.wait(days=rng.uniform(1, 20))
        referral_id = "ref-" + order["order_id"]
        path.track("Referral Sent", {"referral_id": referral_id, "channel": rng.choice(catalog.REFERRAL_CHANNELS)})
        if rng.random() < t.referral_converts:
            path.wait(days=rng.uniform(1, 14))
            path.track("Referral Converted", {"referral_id": referral_id})


def _product(product: catalog.Product) -> dict[str, Any]:
    return {
        "product_id": product.product_id,
        "sku": product.sku,
        "name": product.name,
        "category": product.category,
        "price": product.price,
    }


def _product_only(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "quantity"}
