"""Unsubscribe tokens and referral codes: unforgeable, stable for one key, different under another."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from campaigns.signing import KEY_FILE, InvalidToken, Signer, signer_for, unsubscribe_url
from clm_shared.settings import Settings

SIGNER = Signer(b"k" * 32)


@given(customer_id=st.text(min_size=1, max_size=200), campaign_id=st.text(min_size=1, max_size=64))
def test_a_token_round_trips_any_ids(customer_id: str, campaign_id: str) -> None:
    token = SIGNER.unsubscribe_token(customer_id, campaign_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)  # a URL path segment as it is
    assert SIGNER.verify_unsubscribe(token) == (customer_id, campaign_id)


def test_an_altered_token_is_refused() -> None:
    token = SIGNER.unsubscribe_token("c-1", "welcome")
    body, mac = token.split(".")
    other_body = SIGNER.unsubscribe_token("c-2", "welcome").split(".")[0]
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in [f"{other_body}.{mac}", f"{body}.{flipped}", body, f"{body}.", f".{mac}", "", "a.b.c", "é.é"]:
        with pytest.raises(InvalidToken):
            SIGNER.verify_unsubscribe(bad)


def test_a_token_of_another_key_is_refused() -> None:
    token = Signer(b"other key").unsubscribe_token("c-1", "welcome")
    with pytest.raises(InvalidToken):
        SIGNER.verify_unsubscribe(token)


def test_referral_codes_are_short_stable_and_keyed() -> None:
    code = SIGNER.referral_code("c-1")
    assert re.fullmatch(r"[A-Z2-7]{10}", code)
    assert Signer(b"k" * 32).referral_code("c-1") == code
    assert SIGNER.referral_code("c-2") != code
    assert Signer(b"other key").referral_code("c-1") != code


def test_the_configured_key_is_used_and_no_file_is_written(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, campaigns_signing_key=SecretStr("k" * 32))
    signer = signer_for(settings)
    assert signer.referral_code("c-1") == SIGNER.referral_code("c-1")
    assert not (tmp_path / KEY_FILE).exists()


def test_without_a_configured_key_one_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    token = signer_for(settings).unsubscribe_token("c-1", "welcome")
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o077 == 0  # owner-only
    # Another process (a restart) reads the same file and accepts the token.
    assert signer_for(Settings(data_dir=tmp_path)).verify_unsubscribe(token) == ("c-1", "welcome")


def test_the_unsubscribe_url_is_under_the_public_url() -> None:
    settings = Settings(campaigns_public_url="https://mail.example.org/")
    assert unsubscribe_url(settings, "abc.def") == "https://mail.example.org/v1/unsubscribe/abc.def"
