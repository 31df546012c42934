from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from clm_shared.errors import describe_settings_error
from clm_shared.settings import Settings


def test_defaults_match_the_documented_ports() -> None:
    settings = Settings()
    assert [settings.port_of(s) for s in ("ingest", "stage-engine", "metrics", "campaigns")] == [
        8001,
        8002,
        8003,
        8004,
    ]
    assert settings.kafka_bootstrap == "127.0.0.1:9092"


def test_settings_come_from_clm_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_INGEST_PORT", "9101")
    monkeypatch.setenv("CLM_KAFKA_BOOTSTRAP", "broker-a:9092,broker-b:9092")
    settings = Settings()
    assert settings.ingest_port == 9101
    assert settings.kafka_bootstrap == "broker-a:9092,broker-b:9092"
    assert "kafka_bootstrap" in settings.model_fields_set


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLM_KAFKA_BOOTSTRAP", "no-port"),
        ("CLM_DATABASE_URL", "postgresql://clm@localhost/clm"),
        ("CLM_INGEST_PORT", "70000"),
        ("CLM_LOG_LEVEL", "LOUD"),
        ("CLM_TOPIC_NAMESPACE", "bad-name!"),
        ("CLM_ADMIN_TOKEN", "short"),
    ],
)
def test_a_bad_value_is_reported_with_the_setting_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert describe_settings_error(caught.value).startswith(variable + ":")


def test_a_rejected_database_url_is_reported_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_DATABASE_URL", "postgresql://clm:Sup3r-s3cret@db.internal/clm")
    with pytest.raises(ValidationError) as caught:
        Settings()
    described = describe_settings_error(caught.value)
    assert described.startswith("CLM_DATABASE_URL: ")
    assert "Sup3r-s3cret" not in described


def test_a_service_refuses_to_start_on_a_bad_setting_without_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ingest"],
        env={"CLM_DATABASE_URL": "mysql://clm:Sup3r-s3cret@nope/clm", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "CLM_DATABASE_URL" in done.stderr
    assert "Traceback" not in done.stderr
    assert "Sup3r-s3cret" not in done.stderr + done.stdout


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [f"CLM_{name.upper()}" for name in Settings.model_fields if f"`CLM_{name.upper()}`" not in readme]
    assert missing == []


def test_a_bad_admin_token_is_named_but_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_ADMIN_TOKEN", "weak-secret")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "weak-secret" not in describe_settings_error(caught.value)
    monkeypatch.setenv("CLM_ADMIN_TOKEN", "a-long-enough-admin-token-value")
    settings = Settings()
    assert settings.admin_token is not None
    assert "a-long-enough" not in repr(settings) and "a-long-enough" not in str(settings.model_dump())


def test_an_empty_admin_token_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_ADMIN_TOKEN", "")
    assert Settings().admin_token is None
