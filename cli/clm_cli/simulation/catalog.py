"""The simulated shop: its products, ads, social accounts, podcast, articles and pages (fixed tables)."""

from __future__ import annotations

from typing import NamedTuple


class Product(NamedTuple):
    product_id: str
    sku: str
    name: str
    category: str
    price: float


class AdCampaign(NamedTuple):
    """What lands in ``context.campaign`` (Segment's UTM fields) of an ad-sourced visit."""

    name: str
    source: str
    medium: str


PRODUCTS = (
    Product("p-100", "BEAN-ESP-1KG", "Espresso beans 1 kg", "coffee", 24.90),
    Product("p-101", "BEAN-FLT-500", "Filter roast 500 g", "coffee", 13.50),
    Product("p-102", "BEAN-DEC-500", "Decaf 500 g", "coffee", 14.00),
    Product("p-200", "GEAR-GRD-01", "Hand grinder", "gear", 79.00),
    Product("p-201", "GEAR-KTL-01", "Gooseneck kettle", "gear", 59.00),
    Product("p-202", "GEAR-V60-02", "Pour-over dripper", "gear", 22.00),
    Product("p-300", "CUP-CER-02", "Ceramic cups, pair", "home", 29.00),
    Product("p-301", "GIFT-CARD-50", "Gift card", "gift", 50.00),
)
SUBSCRIPTION_PLANS = (("beans-monthly", 19.00), ("beans-weekly", 59.00))
TRIAL_DAYS = 14

AD_CAMPAIGNS = (
    AdCampaign("spring-sale", "google", "cpc"),
    AdCampaign("grinder-launch", "facebook", "paid_social"),
    AdCampaign("brand", "instagram", "paid_social"),
    AdCampaign("retargeting", "google", "display"),
)
AD_PLACEMENTS = ("search", "feed", "story", "sidebar")
SOCIAL_PLATFORMS = ("instagram", "tiktok", "youtube", "linkedin")
SOCIAL_ACTIONS = ("Social Liked", "Social Followed", "Social Shared", "Social Commented")
PODCAST = "Grounds for Thought"
ARTICLES = (
    ("how-to-dial-in-espresso", "How to dial in espresso"),
    ("light-vs-dark-roast", "Light vs dark roast"),
    ("cleaning-your-grinder", "Cleaning your grinder"),
    ("pour-over-ratios", "Pour-over ratios that work"),
)
PAGES = (("Home", "/"), ("Shop", "/shop"), ("Pricing", "/subscribe"), ("About", "/about"), ("Blog", "/blog"))
SIGN_UP_METHODS = ("email", "google", "apple")
REFERRAL_CHANNELS = ("email", "link", "whatsapp")
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Radia", "Donald")
WIN_BACK = AdCampaign("win-back", "newsletter", "email")
SITE = "https://shop.example.com"
