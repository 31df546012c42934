"""The dashboard's open routes: the page, its own static files and nothing else."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from metrics.dashboard.routes import STATIC_DIR, dashboard_router


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(dashboard_router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metrics") as client:
        yield client


async def test_the_page_comes_with_a_policy_that_keeps_it_on_the_platform(client: httpx.AsyncClient) -> None:
    page = await client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_everything_the_page_loads_is_one_of_its_static_files(client: httpx.AsyncClient) -> None:
    html = (await client.get("/dashboard")).text
    loaded = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert loaded, "the page loads its script and styles"
    for url in loaded:
        assert url.startswith("/dashboard/static/"), url
        answer = await client.get(url)
        assert answer.status_code == 200, url
    js = await client.get("/dashboard/static/dashboard.js")
    assert js.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "name", ["..%2Froutes.py", "..%2F..%2Fapp.py", "%2Fetc%2Fpasswd", "%2E%2E", "missing.js", "routes.py"]
)
async def test_nothing_outside_the_static_folder_is_served(client: httpx.AsyncClient, name: str) -> None:
    assert (await client.get(f"/dashboard/static/{name}")).status_code == 404


async def test_echarts_is_kept_with_its_licence() -> None:
    files = {path.name for path in STATIC_DIR.iterdir()}
    assert {"echarts.min.js", "echarts.LICENSE", "echarts.NOTICE", "echarts.LICENSE-d3"} <= files
    assert 'version:"6.1.0"' in (STATIC_DIR / "echarts.min.js").read_text()


async def test_the_script_never_puts_data_into_html() -> None:
    script = (STATIC_DIR / "dashboard.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
