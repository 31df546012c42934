"""A periodically reloaded set of secret hashes (write keys, API tokens) that stays safe in a database outage."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

V = TypeVar("V")


def hash_secret(secret: str) -> str:
    """SHA-256 of a secret: they are random 192-bit strings, so a slow hash buys nothing."""
    return hashlib.sha256(secret.encode()).hexdigest()


class SecretsUnavailable(Exception):
    """The secret is not in the cache and the store cannot be read now; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the credential store is unreachable; retry later")
        self.retry_after_s = retry_after_s


class SecretHashes(Generic[V]):
    """hash -> value of the active secrets, reloaded every ``max_age_s`` so a revoked one stops within it.

    An unknown secret triggers an early reload (at most once per ``miss_reload_s``), so one created a
    moment ago works at once while random guesses cannot hammer the database. One reload runs at a
    time and concurrent callers wait for it. When a reload fails, the secrets known before keep
    working, unknown ones raise :class:`SecretsUnavailable`, and the next attempt waits ``backoff_s``.
    """

    def __init__(
        self,
        load: Callable[[], Awaitable[dict[str, V]]],
        *,
        max_age_s: float = 5.0,
        miss_reload_s: float = 1.0,
        backoff_s: float = 1.0,
        load_timeout_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        what: str = "secrets",
    ) -> None:
        self._load = load
        self._max_age_s = max_age_s
        self._miss_reload_s = miss_reload_s
        self._backoff_s = backoff_s
        self._load_timeout_s = load_timeout_s
        self._clock = clock
        self._what = what
        self._values: dict[str, V] = {}
        self._loaded_at: float | None = None
        self._failed_at: float | None = None
        self._inflight: asyncio.Future[None] | None = None

    async def lookup(self, secret: str) -> V | None:
        """The value of an active secret, or None; raises SecretsUnavailable when it cannot be known now."""
        digest = hash_secret(secret)
        await self._refresh(self._max_age_s)
        value = self._values.get(digest)
        if value is None:
            await self._refresh(self._miss_reload_s)
            value = self._values.get(digest)
        if value is None and self._failed_at is not None:
            raise SecretsUnavailable(max(1, math.ceil(self._backoff_s)))
        return value

    def _due(self, age_s: float) -> bool:
        now = self._clock()
        if self._failed_at is not None and now - self._failed_at < self._backoff_s:
            return False
        return self._loaded_at is None or now - self._loaded_at >= age_s

    async def _refresh(self, age_s: float) -> None:
        if self._inflight is None:
            if not self._due(age_s):
                return
            self._inflight = asyncio.ensure_future(self._reload())
        # Shielded: a caller that goes away (client disconnect) does not cancel everyone's reload.
        await asyncio.shield(self._inflight)

    async def _reload(self) -> None:
        try:
            async with asyncio.timeout(self._load_timeout_s):
                values = await self._load()
        except Exception as exc:  # the store is down: keep what we had, back off, report unknowns as unavailable
            if self._failed_at is None:
                log.warning(f"{self._what} could not be reloaded; serving the cached ones", error=type(exc).__name__)
            self._failed_at = self._clock()
        else:
            if self._failed_at is not None:
                log.info(f"{self._what} reloaded again")
            self._values, self._loaded_at, self._failed_at = values, self._clock(), None
        finally:
            self._inflight = None
