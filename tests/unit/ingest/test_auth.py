from __future__ import annotations

import base64

import pytest

from ingest.auth import key_from_basic_auth


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_write_key_is_the_basic_user_name() -> None:
    assert key_from_basic_auth(basic("clmwk_abc")) == "clmwk_abc"
    assert key_from_basic_auth(basic("clmwk_abc", "ignored")) == "clmwk_abc"


@pytest.mark.parametrize("header", [None, "", "Bearer x", "Basic", "Basic !!!", basic("")])
def test_missing_or_malformed_headers_give_no_key(header: str | None) -> None:
    assert key_from_basic_auth(header) is None
