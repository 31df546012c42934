"""The secret-hash cache shared by write keys and API tokens: no I/O, an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from clm_shared.access.cache import SecretHashes, SecretsUnavailable, hash_secret


class FakeStore:
    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.loads = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def load(self) -> dict[str, str]:
        self.loads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionRefusedError("database down")
        return dict(self.secrets)

    def add(self, secret: str, value: str) -> None:
        self.secrets[hash_secret(secret)] = value

    def remove(self, secret: str) -> None:
        del self.secrets[hash_secret(secret)]


async def until_loading(store: FakeStore) -> None:
    """Let the event loop run until the store is asked to load (no time passes)."""
    for _ in range(100):
        if store.loads:
            return
        await asyncio.sleep(0)
    raise AssertionError("the store was never asked to load")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cache(store: FakeStore, clock: Clock) -> SecretHashes[str]:
    return SecretHashes(store.load, max_age_s=5, miss_reload_s=1, backoff_s=1, clock=clock)


async def test_secrets_are_reloaded_once_per_period_and_revocation_shows_within_it() -> None:
    store, clock = FakeStore(), Clock()
    store.add("k1", "shop")
    secrets = cache(store, clock)
    assert await secrets.lookup("k1") == "shop"
    store.remove("k1")
    clock.now = 4.9
    for _ in range(10):
        assert await secrets.lookup("k1") == "shop"
    assert store.loads == 1
    clock.now = 5.0
    assert await secrets.lookup("k1") is None


async def test_a_new_secret_works_at_once_but_unknown_ones_reload_at_most_once_a_second() -> None:
    store, clock = FakeStore(), Clock()
    secrets = cache(store, clock)
    assert await secrets.lookup("nope") is None
    clock.now = 1.0
    store.add("fresh", "backend")
    assert await secrets.lookup("fresh") == "backend"
    loads = store.loads
    for _ in range(100):
        assert await secrets.lookup("random") is None
    assert store.loads == loads


async def test_concurrent_callers_wait_for_the_one_reload_in_progress() -> None:
    store, clock = FakeStore(), Clock()
    store.add("k1", "shop")
    store.gate = asyncio.Event()
    secrets = cache(store, clock)
    lookups = [asyncio.create_task(secrets.lookup(key)) for key in ["k1"] * 20 + ["unknown"] * 20]
    await until_loading(store)
    for _ in range(10):
        await asyncio.sleep(0)  # every caller has reached the reload by now
    assert store.loads == 1
    store.gate.set()
    results = await asyncio.gather(*lookups)
    assert results == ["shop"] * 20 + [None] * 20
    assert store.loads == 1


async def test_a_caller_that_gives_up_does_not_cancel_the_reload_of_the_others() -> None:
    store, clock = FakeStore(), Clock()
    store.add("k1", "shop")
    store.gate = asyncio.Event()
    secrets = cache(store, clock)
    impatient, patient = asyncio.create_task(secrets.lookup("k1")), asyncio.create_task(secrets.lookup("k1"))
    await until_loading(store)
    impatient.cancel()
    store.gate.set()
    assert await patient == "shop"
    assert store.loads == 1


async def test_in_an_outage_known_secrets_keep_working_and_unknown_ones_are_unavailable() -> None:
    store, clock = FakeStore(), Clock()
    store.add("k1", "shop")
    secrets = cache(store, clock)
    assert await secrets.lookup("k1") == "shop"
    store.down = True
    clock.now = 10.0
    assert await secrets.lookup("k1") == "shop"
    with pytest.raises(SecretsUnavailable) as caught:
        await secrets.lookup("unknown")
    assert caught.value.retry_after_s >= 1
    assert "unknown" not in str(caught.value)


async def test_an_outage_at_start_makes_every_secret_unavailable() -> None:
    store, clock = FakeStore(), Clock()
    store.add("k1", "shop")
    store.down = True
    secrets = cache(store, clock)
    with pytest.raises(SecretsUnavailable):
        await secrets.lookup("k1")


async def test_after_a_failed_reload_the_next_attempt_waits_for_the_back_off() -> None:
    store, clock = FakeStore(), Clock()
    store.add("k1", "shop")
    secrets = cache(store, clock)
    await secrets.lookup("k1")
    store.down = True
    clock.now = 5.0
    await secrets.lookup("k1")
    failed = store.loads
    for _ in range(50):
        await secrets.lookup("k1")
        with pytest.raises(SecretsUnavailable):
            await secrets.lookup("unknown")
    assert store.loads == failed
    clock.now = 5.99
    await secrets.lookup("k1")
    assert store.loads == failed
    clock.now = 6.0
    await secrets.lookup("k1")
    assert store.loads == failed + 1


async def test_once_the_store_is_back_new_secrets_work_and_revocations_apply() -> None:
    store, clock = FakeStore(), Clock()
    store.add("k1", "shop")
    secrets = cache(store, clock)
    await secrets.lookup("k1")
    store.down = True
    clock.now = 5.0
    with pytest.raises(SecretsUnavailable):
        await secrets.lookup("k2")
    store.down = False
    store.add("k2", "app")
    store.remove("k1")
    clock.now = 6.0
    assert await secrets.lookup("k2") == "app"
    assert await secrets.lookup("k1") is None


async def test_a_load_that_hangs_counts_as_a_failure_after_the_timeout() -> None:
    store, clock = FakeStore(), Clock()
    store.gate = asyncio.Event()  # never set: the load hangs
    secrets = SecretHashes(store.load, load_timeout_s=0.05, clock=clock)
    with pytest.raises(SecretsUnavailable):
        await secrets.lookup("k1")
