"""Limits on reading a request body, in every service: its size, and the time it may take to arrive.

uvicorn bounds the idle time between requests but neither a body's size nor the time it takes, so
one slow client (or a thousand) would hold a connection and a task each for as long as it likes,
and FastAPI reads a whole JSON body into memory before any token is checked.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _Refused(Exception):
    """Raised into the app by ``receive``; whatever the app makes of it, the answer is this refusal."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = orjson.dumps({"success": False, "message": message, "errors": []})


class BodyLimits:
    """Outermost ASGI layer: a body over ``max_bytes`` is 413, one not in within ``timeout_s`` is 408.

    The 408 carries ``Connection: close``, so the server drops the slow socket. The 413 does not: a
    client still writing a big body into a closed socket would get a reset, never the answer, so
    the server reads and discards the rest (uvicorn keeps none of it). Services with a tighter
    limit of their own (ingest) refuse first, with their own message.
    """

    def __init__(self, app: ASGIApp, *, timeout_s: float, max_bytes: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _Refused(413, f"the request body is over {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _answer(send, too_large)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        refused: _Refused | None = None
        started = False
        size = 0

        async def limited_receive() -> Message:
            nonlocal refused, size
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                refused = _Refused(408, "the request body did not arrive in time; the connection is closed")
                raise refused from None
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                refused = too_large
                raise refused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None and not started:
                return  # the app's own answer to the failed read (a 400 or 500) gives way to the refusal
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_Refused):
            await self.app(scope, limited_receive, guarded_send)
        if refused is not None and not started:
            await _answer(send, refused)


async def _answer(send: Send, refusal: _Refused) -> None:
    headers = [(b"content-type", b"application/json")]
    if refusal.status == 408:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": refusal.body})
