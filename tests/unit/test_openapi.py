"""Every service serves its OpenAPI document at /openapi.json, without a token, listing all its routes.

The apps are built but not started (no lifespan): the document needs neither database nor broker,
and a route that wanted a token would fail here, as the token store is only set up at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from pydantic import SecretStr

from clm_shared.settings import Settings

OPS_PATHS = {"/healthz", "/readyz", "/metrics"}
# Routes that take no API token by design (DESIGN §5): the signed unsubscribe link, ingest's write keys.
NOT_BEARER = {"/v1/unsubscribe/{token}"}
TRACKING_PREFIX = "/v1/"
METHODS = {"get", "post", "put", "patch", "delete"}


def factories() -> dict[str, Callable[[Settings], FastAPI]]:
    from campaigns.app import create_app as campaigns
    from ingest.app import create_app as ingest
    from metrics.app import create_app as metrics
    from stage_engine.app import create_app as stage_engine

    return {"ingest": ingest, "stage-engine": stage_engine, "metrics": metrics, "campaigns": campaigns}


def documented_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of every route the app itself says belongs in its OpenAPI document."""
    return {
        (re.sub(r":[^}]+}", "}", route.path), method.lower())  # as documented: without a path convertor
        for route in iter_route_contexts(app.routes)
        if route.path is not None and getattr(route.original_route, "include_in_schema", False)
        for method in route.methods or ()
        if method != "HEAD"
    }


async def served_openapi(app: FastAPI) -> dict[str, Any]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
        answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    spec: dict[str, Any] = answer.json()
    return spec


@pytest.mark.parametrize("service", ["ingest", "stage-engine", "metrics", "campaigns"])
async def test_each_service_serves_its_openapi_with_every_route(service: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, campaigns_signing_key=SecretStr("s" * 32))
    app = factories()[service](settings)
    spec = await served_openapi(app)

    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == app.title
    served = {(path, method) for path, item in spec["paths"].items() for method in item if method in METHODS}
    expected = documented_routes(app)
    assert served == expected
    assert {path for path, _ in expected} - OPS_PATHS, f"{service} documents no route of its own"
    for path, method in served:
        security = spec["paths"][path][method].get("security", [])
        if path in OPS_PATHS or path in NOT_BEARER:
            assert security == [], (path, method)
        elif service == "ingest" and path.startswith(TRACKING_PREFIX):
            assert security == [{"writeKey": []}], (path, method)
        else:
            assert {"HTTPBearer": []} in security, (path, method)
