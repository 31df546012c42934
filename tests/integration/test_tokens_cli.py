"""`clm tokens` and the admin token of `clm up`, against the real database (settings from the environment)."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clm_cli.main import app, ensure_admin_token
from clm_shared.access.tokens import TOKEN_PREFIX, access_engine, active_token_hashes, admin_token_of
from clm_shared.db import create_engine
from clm_shared.settings import Settings, get_settings
from tests.conftest import drop_schemas, make_settings


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str, database_url: str, namespace: str
) -> Iterator[Settings]:
    """`clm` reads its settings from the environment, as an operator's shell would give them."""
    settings = make_settings(kafka_bootstrap, database_url, namespace)
    monkeypatch.setenv("CLM_DATABASE_URL", database_url)
    monkeypatch.setenv("CLM_SCHEMA_NAMESPACE", namespace)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()
    asyncio.run(drop_schemas(database_url, namespace))


def clm(*args: str) -> list[str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()


def stored_hashes(settings: Settings) -> set[str]:
    async def load() -> set[str]:
        engine = create_engine(settings.database_url, schema="public", pool_size=1)
        try:
            return set(await active_token_hashes(access_engine(engine, settings)))
        finally:
            await engine.dispose()

    return asyncio.run(load())


def test_tokens_are_created_listed_and_revoked_and_never_shown_again(cli_env: Settings) -> None:
    read = clm("tokens", "create", "--name", "crm-sync", "--role", "read")[-1]
    admin = clm("tokens", "create", "--name", "ops", "--role", "admin")[-1]
    assert read.startswith(TOKEN_PREFIX) and admin.startswith(TOKEN_PREFIX) and read != admin
    assert len(stored_hashes(cli_env)) == 2

    listing = "\n".join(clm("tokens", "list"))
    assert "crm-sync" in listing and "read" in listing and "ops" in listing and "admin" in listing
    assert read not in listing and admin not in listing

    taken = CliRunner().invoke(app, ["tokens", "create", "--name", "ops", "--role", "read"])
    assert taken.exit_code == 1 and "exists already" in taken.output
    wrong_role = CliRunner().invoke(app, ["tokens", "create", "--name", "x", "--role", "owner"])
    assert wrong_role.exit_code != 0

    clm("tokens", "revoke", "crm-sync")
    assert len(stored_hashes(cli_env)) == 1
    again = CliRunner().invoke(app, ["tokens", "revoke", "crm-sync"])
    assert again.exit_code == 1 and "no active API token" in again.output


def test_clm_up_generates_an_owner_only_admin_token_once_that_the_services_read(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    ensure_admin_token(settings)
    path = tmp_path / "data" / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = admin_token_of(settings)
    assert token is not None and token.startswith(TOKEN_PREFIX)
    ensure_admin_token(settings)
    assert admin_token_of(settings) == token
    configured = Settings(data_dir=tmp_path / "data", admin_token="x" * 32)
    assert admin_token_of(configured) == "x" * 32
    assert admin_token_of(Settings(data_dir=tmp_path / "elsewhere")) is None
