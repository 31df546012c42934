"""Real Segment SDK traffic and generated API traffic against a running ingest process."""

from __future__ import annotations

import asyncio

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from segment.analytics import Client

from tests.e2e.conftest import RunningService, create_key_with_cli
from tests.utils.kafka import read_touchpoints


def test_the_segment_python_sdk_works_by_changing_only_its_host(ingest_service: RunningService) -> None:
    key = create_key_with_cli(ingest_service, "sdk-test")
    errors: list[Exception] = []
    client = Client(
        key, host=ingest_service.url, gzip=True, max_retries=1, on_error=lambda e, _: errors.append(e), sync_mode=True
    )
    client.identify("user-42", {"email": "ada@example.com", "plan": "pro"})
    client.track("user-42", "Order Completed", {"revenue": 99.5, "currency": "EUR"})
    client.page("user-42", category="Docs", name="Pricing", properties={"url": "https://shop.example/pricing"})
    client.flush()
    assert errors == []

    touchpoints = asyncio.run(
        read_touchpoints(ingest_service.settings.kafka_bootstrap, ingest_service.topics.touchpoints, 3)
    )
    by_type = {tp.type: tp for tp in touchpoints if tp.customer_key == "user-42"}
    assert set(by_type) == {"identify", "track", "page"}
    assert by_type["identify"].traits == {"email": "ada@example.com", "plan": "pro"}
    assert by_type["track"].event == "Order Completed"
    assert by_type["track"].properties == {"revenue": 99.5, "currency": "EUR"}
    assert by_type["track"].revenue == 99.5
    assert by_type["track"].context["library"]["name"] == "analytics-python"
    assert by_type["page"].event == "Pricing" and by_type["page"].properties["url"].endswith("/pricing")
    assert all(tp.source == "sdk-test" for tp in by_type.values())


def test_generated_requests_never_get_a_5xx_or_hang(ingest_service: RunningService) -> None:
    key = create_key_with_cli(ingest_service, "fuzz")
    schema = schemathesis.openapi.from_url(ingest_service.url + "/openapi.json")
    failures: list[str] = []
    for operation in schema.get_all_operations():
        op = operation.ok()  # type: ignore[union-attr]  # an invalid operation fails the test here
        if not op.path.startswith("/v1/"):
            continue

        # No shrinking: a failure is recorded with its body as generated, and the run goes on.
        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=[Phase.explicit, Phase.generate],
        )
        @given(case=op.as_strategy())
        def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
            response = case.call(auth=(key, ""), timeout=10)
            if response.status_code not in (200, 400, 401, 413, 422):
                failures.append(f"{case.path} {case.body!r:.300} -> {response.status_code} {response.text[:200]}")

        check()
    assert failures == []
