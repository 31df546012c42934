"""The dashboard in real headless Chromium (Debian's package, driven by Playwright).

The page is driven only through its ``data-testid``s, so the same test runs against the test double
here and against the real metrics service with real data (a ``DashboardTarget`` with its URL and a
read token, from ``CLM_DASHBOARD_URL`` and ``CLM_DASHBOARD_TOKEN``; the data must hold a top
customer whose id is ``HOSTILE``, and a campaign named ``HOSTILE_CAMPAIGN``).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import uvicorn
from fastapi import APIRouter, Header, HTTPException
from playwright.sync_api import Browser, Dialog, Locator, Page, expect, sync_playwright

from clm_cli.infra.browser import CHROMIUM, CHROMIUM_ARGS
from clm_cli.infra.process import free_port
from tests.e2e.live_platform import live_platform
from tests.secret_watch import remember_secret
from tests.utils.metrics_api_double import HOSTILE, HOSTILE_CAMPAIGN, metrics_api_double

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
# The same page filtered to the hostile customer's source: the markup, escapes and direction marks as text.
HOSTILE_SCREENSHOT = SCREENSHOT.with_name("dashboard-hostile-text.png")
VALUE = re.compile(r"^-?[\d,.]+%?$|^—$")  # a number, a percentage, or "—" for an empty denominator
TILES = ["page_views", "nps", "trial_to_paid_rate", "average_order_value", "churn_rate", "affiliate_revenue"]
UNAVAILABLE = "Campaigns service unavailable"
# What the campaigns panel must show: rows, the "unavailable" note, or either (a service we did not start).
CampaignsExpected = Literal["rows", "shipped", "unavailable", "any"]

# What /v1/dashboard/campaigns of the double answers: a campaign named with markup among them.
CAMPAIGN_FIGURES: list[dict[str, Any]] = [
    {"campaign_id": "welcome", "name": "Welcome series", "sent": 1840, "converted": 212,
     "conversion_rate": 0.125, "uplift": 0.041},
    {"campaign_id": "winback", "name": HOSTILE_CAMPAIGN, "sent": 430, "converted": 19, "conversion_rate": 0.05,
     "uplift": -0.004},
    {"campaign_id": "nps-follow-up", "name": "NPS follow-up", "sent": 96, "converted": 3, "conversion_rate": 0.03,
     "uplift": None},
]  # fmt: skip


@dataclass
class DashboardTarget:
    url: str
    read_token: str
    campaigns: CampaignsExpected = "any"


def campaigns_double(token: str, *, available: bool) -> APIRouter:
    """The metrics route that relays the campaigns service's figures: a platform with them, or without."""
    router = APIRouter()

    @router.get("/v1/dashboard/campaigns")
    def campaigns(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        if not authorization or not secrets.compare_digest(authorization, f"Bearer {token}"):
            raise HTTPException(401, "a valid API token is needed", headers={"WWW-Authenticate": "Bearer"})
        return {"available": True, "items": CAMPAIGN_FIGURES} if available else {"available": False, "items": []}

    return router


@contextmanager
def serving_double(*, empty: bool = False) -> Iterator[DashboardTarget]:
    """The API double and the dashboard's routes, served by uvicorn on a free port."""
    token = "clmtk_" + secrets.token_urlsafe(24)
    port = free_port()
    app = metrics_api_double(token, empty=empty)
    # The empty platform also stands for one whose campaigns service is down.
    app.include_router(campaigns_double(token, available=not empty))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-double", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the metrics API double did not start")
        time.sleep(0.02)
    try:
        yield DashboardTarget(f"http://127.0.0.1:{port}", token, "unavailable" if empty else "rows")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module", params=["double", "live"])
def dashboard_target(
    request: pytest.FixtureRequest, kafka_bootstrap: str, database_url: str
) -> Iterator[DashboardTarget]:
    """The API double, then the real services on a shop's data (the screenshot is of the latter).

    ``CLM_DASHBOARD_URL`` and ``CLM_DASHBOARD_TOKEN`` point both at a metrics service already running.
    """
    url, token = os.environ.get("CLM_DASHBOARD_URL"), os.environ.get("CLM_DASHBOARD_TOKEN")
    if url and token:
        yield DashboardTarget(url.rstrip("/"), remember_secret(token))
        return
    if request.param == "live":
        # The live platform runs all four services: the panel lists the eight shipped campaigns and one
        # named with markup.
        expected: CampaignsExpected = "shipped"
        with live_platform(kafka_bootstrap, database_url) as (metrics_url, read_token, _):
            yield DashboardTarget(metrics_url, read_token, expected)
        return
    with serving_double() as target:
        yield target


@pytest.fixture(scope="module")
def empty_dashboard_target() -> Iterator[DashboardTarget]:
    with serving_double(empty=True) as target:
        yield target


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package (as root)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watched:
    page: Page
    requests: list[str]
    dialogs: list[str]
    errors: list[str]


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    """A fresh tab (its own sessionStorage) that records every request, dialog and script error.

    A policy violation (something the page tried to load from outside) is a console error too.
    """
    context = browser.new_context(viewport={"width": 1440, "height": 900}, reduced_motion="reduce")
    page = context.new_page()
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        yield Watched(page, requests, dialogs, errors)
    finally:
        context.close()


def unexpected_errors(watched: Watched) -> list[str]:
    """Script errors, policy violations and failed loads, but the 401s the tests provoke on purpose."""
    return [error for error in watched.errors if "status of 401" not in error]


def loads(page: Page) -> int:
    return int(page.evaluate("Number(document.body.dataset.loaded || 0)"))


def wait_for_load_after(page: Page, count: int) -> None:
    """Until the page finished a load of all its panels after the ``count``-th."""
    page.wait_for_function("n => Number(document.body.dataset.loaded || 0) > n", arg=count)


def tile_values(page: Page) -> dict[str, str]:
    return {name: page.get_by_test_id(f"tile-{name}").get_by_test_id("tile-value").inner_text() for name in TILES}


def sign_in(page: Page, token: str) -> None:
    expect(page.get_by_test_id("token-prompt")).to_be_visible()
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("token-submit").click()


def expect_data(page: Page, *, rows: bool = True) -> None:
    for name in TILES:
        expect(page.get_by_test_id(f"tile-{name}").get_by_test_id("tile-value")).to_have_text(VALUE)
    for chart in ("funnel-chart", "stages-chart", "cohort-heatmap", "clv-chart"):
        expect(page.get_by_test_id(chart).locator("canvas").first).to_be_visible()
    if rows:
        expect(page.get_by_test_id("top-customers").locator("tbody tr td.id").first).to_be_visible()
    expect(page.get_by_test_id("status")).to_have_text(re.compile(r"^Updated"))


def expect_campaigns(page: Page, expected: CampaignsExpected) -> None:
    """The campaigns panel: a chart and a row per campaign, or the note that the campaigns service is away."""
    status, rows = page.get_by_test_id("campaigns-status"), page.get_by_test_id("campaigns-table").locator("tbody tr")
    expect(page.get_by_test_id("campaigns-chart").locator("canvas").first).to_be_visible()
    if expected == "rows":
        expect(rows).to_have_count(len(CAMPAIGN_FIGURES))
        expect(rows.first.locator("td")).to_have_text(["Welcome series", "1,840", "212", "+4.1 pp"])
        expect(rows.nth(2).locator("td").last).to_have_text("—")
        expect(status).to_be_hidden()
    elif expected == "shipped":
        expect(rows).to_have_count(9)
        expect(page.get_by_test_id("campaigns-table").locator("tbody td").filter(has_text="Welcome")).to_be_visible()
        expect(status).to_be_hidden()
    elif expected == "unavailable":
        expect(status).to_have_text(UNAVAILABLE)
        expect(page.get_by_test_id("campaigns-table")).to_be_hidden()
    else:
        expect(status.or_(rows.first)).to_be_visible()


def apply_range(page: Page, start: str, end: str, *, source: str = "") -> None:
    before = loads(page)
    page.get_by_test_id("range-from").fill(start)
    page.get_by_test_id("range-to").fill(end)
    page.get_by_test_id("range-source").fill(source)
    page.get_by_test_id("range-apply").click()
    wait_for_load_after(page, before)


def test_the_dashboard_asks_for_a_token_shows_data_and_follows_the_range(
    dashboard_target: DashboardTarget, watched: Watched
) -> None:
    page = watched.page
    page.goto(dashboard_target.url + "/dashboard")

    sign_in(page, "clmtk_not-a-valid-token")
    expect(page.get_by_test_id("token-error")).to_be_visible()
    sign_in(page, dashboard_target.read_token)
    expect(page.get_by_test_id("token-prompt")).to_be_hidden()
    expect_data(page)
    expect_campaigns(page, dashboard_target.campaigns)

    today = datetime.now(UTC).date()
    apply_range(page, (today - timedelta(days=29)).isoformat(), today.isoformat())
    last_30_days = tile_values(page)
    apply_range(page, (today - timedelta(days=89)).isoformat(), today.isoformat())
    expect_data(page)
    last_90_days = tile_values(page)
    changed = [name for name in TILES if last_30_days[name] != last_90_days[name]]
    assert changed, f"no tile changed with the range: {last_90_days}"

    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The token stays for the session: a reload goes straight to the data.
    page.reload()
    expect_data(page)
    expect(page.get_by_test_id("token-prompt")).to_be_hidden()

    # Nothing came from outside the platform.
    outside = [url for url in watched.requests if not url.startswith(dashboard_target.url + "/")]
    assert not outside, outside
    assert unexpected_errors(watched) == []


def test_data_with_markup_is_shown_as_text(dashboard_target: DashboardTarget, watched: Watched) -> None:
    """Customer ids, campaign names and the source filter with markup, control characters and direction
    marks: each is a cell's text, exactly as stored, and no element, handler or dialog comes of it."""
    page = watched.page
    page.goto(dashboard_target.url + "/dashboard")
    sign_in(page, dashboard_target.read_token)
    expect_data(page)

    top = page.get_by_test_id("top-customers")
    expect(top.locator("tbody tr td.id").filter(has_text="alert(1)")).to_have_count(1)
    assert exact_texts(top.locator("tbody tr td.id")).count(HOSTILE) == 1
    if dashboard_target.campaigns in ("rows", "shipped"):  # a campaign named with markup: a cell's text
        names = page.get_by_test_id("campaigns-table").locator("tbody tr td:first-child")
        expect(names.filter(has_text="onerror")).to_have_count(1)
        assert exact_texts(names).count(HOSTILE_CAMPAIGN) == 1
    today = datetime.now(UTC).date()
    apply_range(page, (today - timedelta(days=13)).isoformat(), today.isoformat(), source=HOSTILE)
    expect(page.get_by_test_id("source-label")).to_have_text(f"source: {HOSTILE}")
    assert exact_texts(page.get_by_test_id("source-label")) == [f"source: {HOSTILE}"]

    # no element, attribute or script came of the data; the page's own scripts are in <head> only
    assert page.locator("main script, .statusbar script, main img, main iframe, [onerror], [onload]").count() == 0
    assert watched.dialogs == []
    assert unexpected_errors(watched) == []
    page.screenshot(path=str(HOSTILE_SCREENSHOT), full_page=True)


def exact_texts(cells: Locator) -> list[str]:
    """Each element's textContent as is: Playwright's text matching would fold its whitespace."""
    return [str(text) for text in cells.evaluate_all("cells => cells.map(cell => cell.textContent)")]


def test_a_refused_token_brings_the_prompt_back(dashboard_target: DashboardTarget, watched: Watched) -> None:
    page = watched.page
    page.goto(dashboard_target.url + "/dashboard")
    sign_in(page, dashboard_target.read_token)
    expect_data(page)

    # As after `clm tokens revoke`: the next call gets 401.
    page.evaluate("sessionStorage.setItem('clm.dashboard.token', 'clmtk_revoked')")
    page.get_by_test_id("refresh").click()
    expect(page.get_by_test_id("token-prompt")).to_be_visible()
    expect(page.get_by_test_id("token-error")).to_contain_text("refused")
    sign_in(page, dashboard_target.read_token)
    expect(page.get_by_test_id("token-prompt")).to_be_hidden()
    expect_data(page)
    assert unexpected_errors(watched) == []


def test_a_platform_without_customers_shows_dashes_not_errors(
    empty_dashboard_target: DashboardTarget, watched: Watched
) -> None:
    page = watched.page
    page.goto(empty_dashboard_target.url + "/dashboard")
    sign_in(page, empty_dashboard_target.read_token)
    expect_data(page, rows=False)
    expect(page.get_by_test_id("tile-page_views").get_by_test_id("tile-value")).to_have_text("0")
    expect(page.get_by_test_id("tile-churn_rate").get_by_test_id("tile-value")).to_have_text("—")
    expect(page.get_by_test_id("top20-share")).to_have_text("—")
    expect(page.get_by_test_id("clv-predicted")).to_have_text("—")
    expect(page.get_by_test_id("top-customers")).to_contain_text("No customers with revenue yet")
    expect_campaigns(page, empty_dashboard_target.campaigns)
    expect(page.get_by_test_id("status")).not_to_contain_text("could not load")
    assert unexpected_errors(watched) == []


def test_the_page_refreshes_itself(dashboard_target: DashboardTarget, watched: Watched) -> None:
    page = watched.page
    page.clock.install()  # the page's timers run on a clock the test moves: no waiting for real time
    page.goto(dashboard_target.url + "/dashboard")
    sign_in(page, dashboard_target.read_token)
    expect_data(page)
    before = loads(page)
    page.clock.run_for(60_000)
    wait_for_load_after(page, before)
    assert unexpected_errors(watched) == []
