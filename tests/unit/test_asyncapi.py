"""The AsyncAPI document: current, well-formed AsyncAPI 3, and true to what the services encode."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from clm_cli.main import app
from clm_shared import asyncapi
from clm_shared.cloudevents import encode
from clm_shared.schemas.lifecycle import (
    CampaignConverted,
    CampaignFailed,
    CampaignSent,
    CustomerErased,
    CustomerMerged,
    Health,
    HealthChanged,
    Stage,
    StageChanged,
)
from clm_shared.serde import JsonSerializer
from clm_shared.topics import Topics
from tests.utils.factories import touchpoint

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / asyncapi.DOCUMENT_PATH
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# AsyncAPI 3.0.0: keys of components and the ids of channels and operations.
COMPONENT_KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")
REQUIRED_TOP_LEVEL = {"asyncapi", "info"}
ALLOWED_TOP_LEVEL = {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations", "components"}

SAMPLES: dict[type[BaseModel], BaseModel] = {
    StageChanged: StageChanged(
        customer_id="u1",
        from_stage=None,
        to_stage=Stage.ENGAGEMENT,
        skipped=[Stage.DISCOVERY],
        rule="signed_up",
        message_id="m1",
        event_time=NOW,
    ),
    HealthChanged: HealthChanged(
        customer_id="u1", from_health=Health.ACTIVE, to_health=Health.AT_RISK, rule="inactive_60d", event_time=NOW
    ),
    CustomerMerged: CustomerMerged(customer_id="u1", merged_id="anon-1", message_id="m2", event_time=NOW),
    CustomerErased: CustomerErased(customer_id="u1", erased_at=NOW),
    CampaignSent: CampaignSent(
        customer_id="u1",
        campaign_id="welcome",
        version=1,
        run_id=3,
        message_id=9,
        step="hello",
        channel="email",
        variant=None,
        sent_at=NOW,
    ),
    CampaignFailed: CampaignFailed(
        customer_id="u1",
        campaign_id="welcome",
        version=1,
        run_id=3,
        message_id=9,
        step="hello",
        channel="webhook",
        attempts=5,
        error="HTTP 500",
        failed_at=NOW,
    ),
    CampaignConverted: CampaignConverted(
        customer_id="u1",
        campaign_id="welcome",
        version=1,
        run_id=3,
        order_message_id="o1",
        revenue=42.5,
        event_time=NOW,
    ),
}
KINDS = [*asyncapi.LIFECYCLE_KINDS, *asyncapi.CAMPAIGN_KINDS]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMMITTED.read_text(encoding="utf-8"))
    return loaded


def resolve(document: dict[str, Any], ref: str) -> Any:
    """A local JSON pointer (``#/a/b``) in the document; KeyError when it points nowhere."""
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def payload_validator(document: dict[str, Any], message: str) -> jsonschema_rs.Draft7Validator:
    """A validator of one message's payload, resolving references inside the document."""
    payload = document["components"]["messages"][message]["payload"]
    return jsonschema_rs.Draft7Validator({**payload, "components": document["components"]})


def test_the_committed_document_is_current() -> None:
    assert COMMITTED.exists(), "docs/asyncapi.yaml is missing: run `clm contracts asyncapi` in the repository root"
    assert COMMITTED.read_text(encoding="utf-8") == asyncapi.render(), (
        "docs/asyncapi.yaml is out of date with the shared models: run `clm contracts asyncapi` in the repository"
        " root and commit the result"
    )


def test_the_document_has_the_structure_of_asyncapi_3(document: dict[str, Any]) -> None:
    assert REQUIRED_TOP_LEVEL <= set(document) <= ALLOWED_TOP_LEVEL
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]
    for server in document["servers"].values():
        assert server["protocol"] == "kafka" and server["host"]
    for channel_id, channel in document["channels"].items():
        assert COMPONENT_KEY.match(channel_id)
        assert channel["address"] and channel["messages"], channel_id
    for operation_id, operation in document["operations"].items():
        assert COMPONENT_KEY.match(operation_id)
        assert operation["action"] in ("send", "receive"), operation_id
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), operation_id
        # 3.0.0: an operation's messages are those of its own channel.
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), operation_id
    for section in document["components"].values():
        assert all(COMPONENT_KEY.match(key) for key in section)
    for message in document["components"]["messages"].values():
        assert {"payload", "contentType", "bindings"} <= set(message)
        assert message["bindings"]["kafka"]["key"]["type"] == "string"


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    found = refs(document)
    assert len(found) > 50
    for ref in found:
        try:
            resolve(document, ref)
        except (KeyError, IndexError, TypeError):
            pytest.fail(f"unresolved $ref {ref}")


def test_every_payload_schema_is_a_valid_json_schema(document: dict[str, Any]) -> None:
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid({"$schema": "http://json-schema.org/draft-07/schema#", **schema}), name


def test_every_topic_of_the_registry_has_a_channel_and_every_channel_a_sender(document: dict[str, Any]) -> None:
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == set(Topics().all())
    sent_to = {op["channel"]["$ref"] for op in document["operations"].values() if op["action"] == "send"}
    assert sent_to == {f"#/channels/{channel_id}" for channel_id in document["channels"]}


def test_a_topic_without_a_description_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Topics, "all", lambda self: ["clm.new-topic.v1"])
    with pytest.raises(ValueError, match=r"clm\.new-topic\.v1"):
        asyncapi.build_document()


def test_each_event_type_has_its_message_with_its_data_schema(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    for kind in KINDS:
        message = messages[kind.message_id]
        assert message["name"] == str(kind.event_type)
        assert message["contentType"] == "application/cloudevents+json"
        envelope = resolve(document, message["payload"]["$ref"])
        assert envelope["properties"]["type"]["const"] == str(kind.event_type)
        assert envelope["properties"]["data"]["$ref"] == f"#/components/schemas/{kind.data.__name__}"


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: str(kind.event_type))
def test_what_the_shared_encoder_writes_matches_its_message_and_no_other(
    document: dict[str, Any], kind: asyncapi.EventKind
) -> None:
    message = encode(
        event_id="e1",
        event_type=kind.event_type,
        service=kind.service,
        customer_id="u1",
        sequence=1,
        time=NOW,
        data=SAMPLES[kind.data],
    )
    event = orjson.loads(message.value)
    payload_validator(document, kind.message_id).validate(event)
    for other in KINDS:
        if other is not kind:
            assert not payload_validator(document, other.message_id).is_valid(event), other.event_type
    assert not payload_validator(document, kind.message_id).is_valid({**event, "sequence": 0})


def test_a_touchpoint_as_ingest_writes_it_matches_the_touchpoint_message(document: dict[str, Any]) -> None:
    written = JsonSerializer()(touchpoint("Order Completed", revenue=12.5))
    validator = payload_validator(document, "touchpoint")
    validator.validate(orjson.loads(written))
    assert not validator.is_valid({**orjson.loads(written), "category": "nowhere"})


def test_the_consumer_groups_are_the_services_own() -> None:
    from campaigns import consumers as campaigns
    from metrics import consumers as metrics
    from stage_engine.app import GROUP_ID

    topics = Topics()
    expected = {
        ("stage-engine", topics.touchpoints, GROUP_ID),
        ("metrics", topics.touchpoints, metrics.TOUCHPOINTS_GROUP),
        ("metrics", topics.stage_changes, metrics.LIFECYCLE_GROUP),
        ("metrics", topics.campaign_events, metrics.LIFECYCLE_GROUP),
        ("campaigns", topics.touchpoints, campaigns.TOUCHPOINTS_GROUP),
        ("campaigns", topics.stage_changes, campaigns.LIFECYCLE_GROUP),
    }
    assert {(f.service, f.topic, f.group) for f in asyncapi.FLOWS if f.action == "receive"} == expected


def test_the_cli_writes_the_document_and_its_check_fails_on_a_stale_one(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.yaml"
    runner = CliRunner()
    assert runner.invoke(app, ["contracts", "asyncapi", "--check", "-o", str(target)]).exit_code == 1
    assert runner.invoke(app, ["contracts", "asyncapi", "-o", str(target)]).exit_code == 0
    assert target.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
    assert runner.invoke(app, ["contracts", "asyncapi", "--check", "-o", str(target)]).exit_code == 0
    target.write_text("asyncapi: 3.0.0\n", encoding="utf-8")
    checked = runner.invoke(app, ["contracts", "asyncapi", "--check", "-o", str(target)])
    assert checked.exit_code == 1 and "clm contracts asyncapi" in checked.output
