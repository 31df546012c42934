"""A NUL (``%00``) in a path or query parameter through the real services: a 404 or a 400, not the database's 500.

No stored id or source holds a NUL (ingest refuses it, PostgreSQL cannot keep one), so no route takes
it in an id, and the metrics' ``source`` filter is refused naming the parameter.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from clm_shared.settings import Settings
from clm_shared.topics import Topics
from tests.abuse.conftest import abuse_settings, serving

PATHS = {
    "stage-engine": [("GET", "/v1/customers/{}"), ("DELETE", "/v1/customers/{}")],
    "campaigns": [
        ("GET", "/v1/customers/{}/messages"),
        ("GET", "/v1/campaigns/{}"),
        ("GET", "/v1/campaigns/{}/stats"),
        ("GET", "/v1/campaigns/{}/members"),
        ("GET", "/v1/campaigns/{}/versions/1"),
        ("DELETE", "/v1/campaigns/{}"),
        ("POST", "/v1/campaigns/{}/pause"),
    ],
}


@pytest.mark.parametrize("name", sorted(PATHS))
async def test_a_nul_in_an_id_of_the_path_is_a_404(
    settings: Settings, topics: Topics, tmp_path: Path, name: str
) -> None:
    async with serving(name, abuse_settings(settings, tmp_path)) as service:
        headers = {"Authorization": f"Bearer {service.admin}"}
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as client:
            for method, template in PATHS[name]:
                for value in ("%00", "a%00b", "%27%3B%00--"):
                    answer = await client.request(method, template.format(value))
                    assert answer.status_code == 404, (method, template, value, answer.text[:200])
            # the same routes still answer an id without one
            assert (
                await client.get("/v1/campaigns/nothing" if name == "campaigns" else "/v1/customers/x")
            ).status_code == 404


async def test_a_nul_in_the_metrics_source_filter_is_a_400_naming_it(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    async with serving("metrics", abuse_settings(settings, tmp_path)) as service:
        headers = {"Authorization": f"Bearer {service.read}"}
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as client:
            answer = await client.get("/v1/metrics", params={"source": "shop\x00'; --"})
            assert answer.status_code == 400, answer.text[:200]
            assert answer.json()["detail"]["parameter"] == "source"
            hostile = "<script>alert(1)</script> \x01\x1b[31m \u202etxet\u202c"
            answer = await client.get("/v1/metrics", params={"source": hostile, "names": "page_views"})
            assert (answer.status_code, answer.json()["source"]) == (200, hostile)


async def test_a_nul_in_the_customers_cursor_is_a_400_naming_it(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    async with serving("stage-engine", abuse_settings(settings, tmp_path)) as service:
        headers = {"Authorization": f"Bearer {service.read}"}
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as client:
            answer = await client.get("/v1/customers", params={"cursor": "a\x00b"})
            assert answer.status_code == 400, answer.text[:200]
            assert "cursor" in answer.json()["detail"]
            hostile = "<script>alert(1)</script> \x01\x1b[31m \u202etxet\u202c"
            answer = await client.get("/v1/customers", params={"cursor": hostile})
            assert answer.status_code == 200 and isinstance(answer.json()["items"], list), answer.text[:200]
