"""Generated requests against each service's OpenAPI, with valid credentials: no 5xx, no hang, documented answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from clm_shared.settings import Settings
from clm_shared.topics import Topics
from ingest.requests import ENDPOINTS
from tests.abuse.conftest import SERVICES, Service, abuse_settings, serving

EXAMPLES = 20
CALL_TIMEOUT_S = 30  # generous on a loaded 2-core machine: this catches hangs, it does not measure speed
TRACKING = {f"/v1/{endpoint}" for endpoint in ENDPOINTS}
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]


def fuzz(service: Service) -> list[str]:
    """Every operation, EXAMPLES derandomized cases each; returns one line per failed case."""
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an operation the schema cannot describe fails here
        fuzz_operation(operation, service, failures)
    return failures


def fuzz_operation(operation: APIOperation[Any, Any, Any, Any], service: Service, failures: list[str]) -> None:
    tracking = service.name == "ingest" and operation.path in TRACKING
    credentials: dict[str, Any] = {"auth": (service.write_key, "")} if tracking else {}
    headers = {} if tracking else {"Authorization": f"Bearer {service.admin}"}

    # No shrinking: a failure is recorded with its case as generated, and the run goes on.
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
        where = f"{case.method} {case.formatted_path} {case.query!r:.200} {case.body!r:.200}"
        try:
            response = case.call(headers=headers, timeout=CALL_TIMEOUT_S, **credentials)
        except requests.Timeout:
            failures.append(f"{where}: no answer within {CALL_TIMEOUT_S}s")
            return
        if case.path == "/readyz" and response.status_code == 503:
            return  # "not ready" (a consumer not yet assigned) is /readyz's documented answer, not a fault
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as failure:  # one check failure, or a group of them
            found = getattr(failure, "exceptions", [failure])
            titles = ", ".join(str(getattr(each, "title", type(each).__name__)) for each in found)
            failures.append(f"{where} -> {response.status_code} {response.text[:200]}: {titles}")

    check()


@pytest.mark.parametrize("name", SERVICES)
async def test_generated_requests_get_no_5xx_and_documented_answers(
    settings: Settings, topics: Topics, tmp_path: Path, name: str
) -> None:
    async with serving(name, abuse_settings(settings, tmp_path)) as service:
        # requests is blocking: a thread keeps this test's event loop (and the database calls) free.
        failures = await asyncio.to_thread(fuzz, service)
    assert not failures, "\n".join(failures)
