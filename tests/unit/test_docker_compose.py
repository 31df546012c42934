"""docker-compose.yml cannot be started here (no Docker engine), so its structure is checked instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from clm_cli.infra.postgres import SERVER_SETTINGS
from clm_cli.stack import SERVICES
from clm_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_infrastructure_is_the_official_kafka_in_kraft_mode_and_postgres(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert "ZOOKEEPER" not in " ".join(kafka["environment"])
    assert compose["services"]["postgres"]["image"].startswith("postgres:")


def test_every_container_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"], name


@pytest.mark.parametrize("name", list(SERVICES))
def test_each_platform_service_is_built_from_the_repo_and_waits_for_healthy_dependencies(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert service["command"] == ["python", "-m", SERVICES[name]]
    assert service["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    port = Settings().port_of(name)
    # Only the tracking API is published on every interface; the others answer this host only.
    published = f"{port}:{port}" if name == "ingest" else f"127.0.0.1:{port}:{port}"
    assert service["ports"] == [published]
    assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])


@pytest.mark.parametrize("name", list(SERVICES))
def test_services_use_only_real_settings_pointing_at_the_compose_network(compose: dict[str, Any], name: str) -> None:
    env = compose["services"][name]["environment"]
    fields = {f"CLM_{field.upper()}" for field in Settings.model_fields}
    assert set(env) <= fields
    settings = Settings(**{key.removeprefix("CLM_").lower(): value for key, value in env.items()})
    assert settings.kafka_bootstrap == "kafka:9092"
    assert "@postgres:5432/" in settings.database_url
    assert settings.host == "0.0.0.0"


def test_broker_and_database_data_live_in_declared_named_volumes(compose: dict[str, Any]) -> None:
    mounted = {
        volume.split(":")[0] for name in ("kafka", "postgres") for volume in compose["services"][name]["volumes"]
    }
    assert mounted == {"kafka-data", "postgres-data"}
    # The stage engine keeps its generated erasure key across restarts.
    assert compose["services"]["stage-engine"]["volumes"] == ["stage-engine-data:/data"]
    assert compose["services"]["stage-engine"]["environment"]["CLM_DATA_DIR"] == "/data"
    assert set(compose["volumes"]) == mounted | {"stage-engine-data"}


def test_postgres_runs_with_the_settings_of_the_native_launcher(compose: dict[str, Any]) -> None:
    command = compose["services"]["postgres"]["command"]
    given = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in command[2::2]}
    assert command[0] == "postgres"
    assert set(command[1::2]) == {"-c"}
    # fsync is the server's default; the launcher names it so that no local config can turn it off.
    assert given == {name: value for name, value in SERVER_SETTINGS.items() if name != "fsync"}
