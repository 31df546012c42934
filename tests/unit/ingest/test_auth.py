from __future__ import annotations

import base64

import pytest

from ingest.auth import WriteKeys, key_from_basic_auth
from ingest.keys import hash_key


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_write_key_is_the_basic_user_name() -> None:
    assert key_from_basic_auth(basic("clmwk_abc")) == "clmwk_abc"
    assert key_from_basic_auth(basic("clmwk_abc", "ignored")) == "clmwk_abc"


@pytest.mark.parametrize("header", [None, "", "Bearer x", "Basic", "Basic !!!", basic("")])
def test_missing_or_malformed_headers_give_no_key(header: str | None) -> None:
    assert key_from_basic_auth(header) is None


class FakeStore:
    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.loads = 0

    async def load(self) -> dict[str, str]:
        self.loads += 1
        return dict(self.keys)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_revoked_key_stops_working_once_the_cache_is_older_than_its_max_age() -> None:
    store, clock = FakeStore(), Clock()
    store.keys[hash_key("k1")] = "shop"
    keys = WriteKeys(store.load, max_age_s=5, clock=clock)
    assert await keys.name_of("k1") == "shop"
    del store.keys[hash_key("k1")]
    clock.now = 4.9
    assert await keys.name_of("k1") == "shop"
    clock.now = 5.0
    assert await keys.name_of("k1") is None


async def test_a_new_key_works_at_once_but_unknown_keys_reload_at_most_once_a_second() -> None:
    store, clock = FakeStore(), Clock()
    keys = WriteKeys(store.load, max_age_s=5, miss_reload_s=1, clock=clock)
    assert await keys.name_of("nope") is None
    clock.now = 1.0
    store.keys[hash_key("fresh")] = "backend"
    assert await keys.name_of("fresh") == "backend"
    loads = store.loads
    for _ in range(100):
        assert await keys.name_of("random") is None
    assert store.loads == loads
