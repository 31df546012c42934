"""Tests wait on conditions, never on fixed sleeps."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import pytest


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll a predicate (sync or async) until it holds; fail the test naming `what` on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)
