"""Write-key checks: Segment's Basic auth (key as user name) or a ``writeKey`` body field."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable

from ingest.keys import hash_key

KeyLoader = Callable[[], Awaitable[dict[str, str]]]


def key_from_basic_auth(header: str | None) -> str | None:
    """The user name of an HTTP Basic header; None when absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0]
    return user or None


class WriteKeys:
    """Active keys cached in memory, reloaded every ``max_age_s`` so a revoked key stops within it.

    An unknown key triggers an early reload (at most once per ``miss_reload_s``), so a key created a
    moment ago works at once while random keys cannot hammer the database.
    """

    def __init__(
        self,
        load: KeyLoader,
        *,
        max_age_s: float = 5.0,
        miss_reload_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._max_age_s = max_age_s
        self._miss_reload_s = miss_reload_s
        self._clock = clock
        self._names: dict[str, str] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def name_of(self, key: str) -> str | None:
        """The name of an active key, or None."""
        digest = hash_key(key)
        if self._stale(self._max_age_s):
            await self._reload(self._max_age_s)
        name = self._names.get(digest)
        if name is None and self._stale(self._miss_reload_s):
            await self._reload(self._miss_reload_s)
            name = self._names.get(digest)
        return name

    def _stale(self, age_s: float) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= age_s

    async def _reload(self, age_s: float) -> None:
        async with self._lock:
            if self._stale(age_s):  # another request may have reloaded while this one waited
                self._names = await self._load()
                self._loaded_at = self._clock()
