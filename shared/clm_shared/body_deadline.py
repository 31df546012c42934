"""A deadline on reading a request body: a client that trickles it, or stops sending, gets 408 and is cut off.

uvicorn bounds the idle time between requests but not the time a request's body takes, so one
slow client (or a thousand) would hold a connection and a task each for as long as it likes.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TIMEOUT_BODY = orjson.dumps(
    {"success": False, "message": "the request body did not arrive in time; the connection is closed", "errors": []}
)


class _BodyTooSlow(Exception):
    """Raised into the app by ``receive``; whatever the app makes of it, the answer is the 408."""


class BodyDeadline:
    """Outermost ASGI layer: the whole body must arrive within ``timeout_s`` of the request's headers."""

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        timed_out = False
        started = False

        async def timed_receive() -> Message:
            nonlocal timed_out
            try:
                async with asyncio.timeout_at(deadline):
                    return await receive()
            except TimeoutError:
                timed_out = True
                raise _BodyTooSlow from None

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out and not started:
                return  # the app's own answer to the failed read (a 400 or 500) gives way to the 408
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooSlow):
            await self.app(scope, timed_receive, guarded_send)
        if timed_out and not started:
            # Connection: close makes the server drop the socket instead of reading the rest of the body.
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 408, "headers": headers})
            await send({"type": "http.response.body", "body": TIMEOUT_BODY})
