"""A body too big or too slow is answered 413 or 408 (and cut off), whatever the app makes of it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.types import Message

from clm_shared.body_limits import BodyLimits


class Item(BaseModel):
    name: str


def app() -> FastAPI:
    api = FastAPI()

    @api.post("/model")
    async def model(item: Item) -> dict[str, str]:  # FastAPI turns a failed body read into a 400
        return {"name": item.name}

    @api.post("/raw")
    async def raw(request: Request) -> dict[str, int]:  # a raw read: the failure would be a 500
        return {"size": len(await request.body())}

    return api


async def call(
    path: str, body_parts: list[bytes], *, stall: bool, declared: int | None = None, max_bytes: int = 1000
) -> list[Message]:
    parts = list(body_parts)
    never: asyncio.Event = asyncio.Event()

    async def receive() -> Message:
        if parts:
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts) or stall}
        await never.wait()  # the client stopped sending
        raise AssertionError("unreachable")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")]
        + ([(b"content-length", str(declared).encode())] if declared is not None else []),
        "scheme": "http",
        "server": ("test", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }
    limits = BodyLimits(app(), timeout_s=0.2, max_bytes=max_bytes)
    await asyncio.wait_for(limits(scope, receive, send), 10)
    return sent


@pytest.mark.parametrize("path", ["/model", "/raw"])
async def test_a_stalled_body_is_408_with_connection_close(path: str) -> None:
    sent = await call(path, [b'{"name": "trick'], stall=True)
    start, body = sent
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert b"did not arrive in time" in body["body"]


@pytest.mark.parametrize("path", ["/model", "/raw"])
async def test_a_body_that_arrives_in_time_passes(path: str) -> None:
    sent = await call(path, [b'{"name": ', b'"ok"}'], stall=False)
    assert sent[0]["status"] == 200


@pytest.mark.parametrize("path", ["/model", "/raw"])
async def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(path: str) -> None:
    for sent in (
        await call(path, [], stall=True, declared=5000),  # refused before a byte is read
        await call(path, [b'{"name": "', b"x" * 600, b"x" * 600, b'"}'], stall=False),
    ):
        start, body = sent
        assert start["status"] == 413
        assert (b"connection", b"close") not in start["headers"]  # the client may still be writing: no reset
        assert b"over 1000 bytes" in body["body"]
