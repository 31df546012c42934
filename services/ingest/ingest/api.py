"""The Segment-compatible tracking endpoints: ``POST /v1/{track,identify,page,screen,group,alias,batch}``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from clm_shared.access.cache import SecretsUnavailable
from clm_shared.access.tokens import TOKEN_PREFIX
from clm_shared.kafka.producer import PublishUnavailable
from clm_shared.schemas.segment import CALL_MODELS, BatchCall
from ingest.auth import WriteKeys, key_from_basic_auth
from ingest.normalize import MessageIds, to_touchpoint
from ingest.publishing import TouchpointPublisher, encode
from ingest.records import touchpoint_records
from ingest.requests import (
    ENDPOINTS,
    ESCAPED_NUL,
    MAX_REQUEST_BYTES,
    FieldError,
    Rejected,
    body_write_key,
    decode_body,
    load_json,
    refuse_nul,
    validate_payload,
)
from ingest.telemetry import EVENTS_ACCEPTED, EVENTS_REJECTED, PUBLISH_SECONDS, REQUEST_SECONDS
from ingest.wire import decode_request

log = structlog.get_logger(__name__)

ACCEPTED_BODY = orjson.dumps({"success": True})


@dataclass
class IngestRuntime:
    """What the endpoints need, built once by the app factory."""

    keys: WriteKeys
    touchpoints: TouchpointPublisher
    retry_after_s: int = 5
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


class Accepted(BaseModel):
    success: bool = True


class ErrorItem(BaseModel):
    index: int | None
    type: str | None
    field: str
    message: str


class Refusal(BaseModel):
    success: bool = False
    message: str
    errors: list[ErrorItem]


RESPONSES: dict[int, str] = {
    200: "Every event is durably in Kafka.",
    400: "The body is not JSON, or not valid gzip.",
    401: "No write key, or an unknown or revoked one.",
    413: "Over 32 KB for one event or 500 KB for the request.",
    422: "Invalid events: each error names the event's index and the field (also text holding U+0000, which"
    " cannot be stored).",
    503: "Kafka did not acknowledge in time, or a new key cannot be checked while the database is down;"
    " retry after `Retry-After` seconds.",
}


class TrackingCall:
    """The ASGI app of one ``/v1/*`` endpoint: it reads the scope and writes the answer itself.

    Starlette's request and response objects, routing and middleware cost about a tenth of a
    batch request; ``create_service_app`` hands these POSTs straight to this app (still inside
    ``BodyLimits``), and the Starlette route of the same path serves the rest (a 405 for other methods).
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._accepted = EVENTS_ACCEPTED.labels(endpoint)
        self._seconds = REQUEST_SECONDS.labels(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: IngestRuntime = scope["app"].state.ingest
        started = time.perf_counter()
        try:
            accepted = await _accept(_Headers(scope["headers"]), receive, self.endpoint, runtime)
            self._accepted.inc(accepted)
            await _answer(send, 200, ACCEPTED_BODY)
        except Rejected as refusal:
            EVENTS_REJECTED.labels(refusal.reason).inc(refusal.events)
            extra = [(b"www-authenticate", b'Basic realm="clm"')] if refusal.status == 401 else []
            await _answer(send, refusal.status, orjson.dumps(refusal.body()), extra)
        except PublishUnavailable as exc:
            EVENTS_REJECTED.labels("unavailable").inc()
            log.warning("broker unavailable; answering 503", endpoint=self.endpoint, error=str(exc))
            body = {"success": False, "message": "the event store is unavailable; retry later", "errors": []}
            await _answer(send, 503, orjson.dumps(body), [(b"retry-after", str(runtime.retry_after_s).encode())])
        except SecretsUnavailable as exc:
            EVENTS_REJECTED.labels("unavailable").inc()
            body = {"success": False, "message": "write keys cannot be checked now; retry later", "errors": []}
            await _answer(send, 503, orjson.dumps(body), [(b"retry-after", str(exc.retry_after_s).encode())])
        except _Disconnected:
            pass  # nobody is left to answer
        finally:
            self._seconds.observe(time.perf_counter() - started)


class _Disconnected(Exception):
    """The client went away before its body arrived."""


class _Headers:
    """The few request headers ingest reads, decoded as Starlette does (latin-1; the first of repeats)."""

    __slots__ = ("authorization", "content_encoding", "content_length")

    content_length: str | None
    authorization: str | None
    content_encoding: str | None

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_length = self.authorization = self.content_encoding = None
        for name, value in raw:
            if name == b"content-length":
                self.content_length = self.content_length or value.decode("latin-1")
            elif name == b"authorization":
                self.authorization = self.authorization or value.decode("latin-1")
            elif name == b"content-encoding":
                self.content_encoding = self.content_encoding or value.decode("latin-1")


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON answer with the headers Starlette's ``Response`` writes."""
    start = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": start + headers if headers else start})
    await send({"type": "http.response.body", "body": body})


async def _accept(headers: _Headers, receive: Receive, endpoint: str, runtime: IngestRuntime) -> int:
    """Check, validate, normalize and publish a request; returns how many events Kafka acknowledged."""
    declared = headers.content_length or ""
    if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise Rejected(413, f"request body is over {MAX_REQUEST_BYTES // 1024} KB")  # before reading it
    key = key_from_basic_auth(headers.authorization)
    if key is not None:
        source = await _source_of(runtime.keys, key)
        if source is None:
            raise Rejected(401, "unknown or revoked write key")
        body = decode_body(await _read_body(receive), headers.content_encoding)
        if ESCAPED_NUL in body:
            refuse_nul(load_json(body), endpoint)
        records = _fast_records(body, endpoint, source, runtime.clock())
        if records is None:  # the pydantic path decides, and names index and field when it refuses
            records = _records(load_json(body), endpoint, source, runtime.clock())
    else:
        # No header: the key can only be in the body, and nothing is validated before it is checked.
        try:
            body = decode_body(await _read_body(receive), headers.content_encoding)
            payload = load_json(body)
        except Rejected as refusal:
            if refusal.status == 413:
                raise
            raise Rejected(401, "a write key is needed (HTTP Basic user name)") from None
        key = body_write_key(payload)
        source = await _source_of(runtime.keys, key) if key else None
        if source is None:
            raise Rejected(
                401, "unknown or revoked write key" if key else "a write key is needed (HTTP Basic user name)"
            )
        if ESCAPED_NUL in body:
            refuse_nul(payload, endpoint)
        records = _records(payload, endpoint, source, runtime.clock())
    published = time.perf_counter()
    await runtime.touchpoints.publish_encoded(records)
    PUBLISH_SECONDS.observe(time.perf_counter() - published)
    return len(records)


def _fast_records(body: bytes, endpoint: str, source: str, received_at: datetime) -> list[tuple[bytes, bytes]] | None:
    """The records by the msgspec path (``wire.py``), or None when it leaves the request to pydantic."""
    request = decode_request(body, endpoint)
    if request is None:
        return None
    try:
        return touchpoint_records(
            request, received_at=received_at, source=source, message_id=MessageIds(request.missing_ids)
        )
    except TypeError:  # an integer JSON text holds but orjson does not: the pydantic path reads it as a float
        return None


def _records(payload: Any, endpoint: str, source: str, received_at: datetime) -> list[tuple[bytes, bytes]]:
    """Validate with the Segment models, normalize to touchpoints and encode them (or refuse with a 422)."""
    parsed = validate_payload(payload, endpoint)
    touchpoints = []
    message_ids = MessageIds(sum(1 for call in parsed.calls if not call.message_id))
    for index, call in enumerate(parsed.calls):
        try:
            touchpoints.append(
                to_touchpoint(
                    call,
                    received_at=received_at,
                    source=source,
                    batch_context=parsed.context,
                    batch_integrations=parsed.integrations,
                    batch_sent_at=parsed.sent_at,
                    message_id=message_ids,
                )
            )
        except ValueError as exc:  # a value the schema let through but a touchpoint cannot hold
            error = FieldError(index, "(event)", str(exc), call.type)
            raise Rejected(422, "an event cannot be normalized", [error]) from exc
    return encode(touchpoints)


async def _source_of(keys: WriteKeys, key: str) -> str | None:
    """The source a write key belongs to; API tokens are never write keys (refused without a lookup)."""
    if key.startswith(TOKEN_PREFIX):
        return None
    return await keys.lookup(key)


async def _read_body(receive: Receive) -> bytes:
    """The body, refused as soon as it passes the request limit (chunked bodies declare no length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise Rejected(413, f"request body is over {MAX_REQUEST_BYTES // 1024} KB")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


TRACKING_CALLS: dict[str, TrackingCall] = {f"/v1/{endpoint}": TrackingCall(endpoint) for endpoint in ENDPOINTS}


_MODELS: dict[str, type[BaseModel]] = {**CALL_MODELS, "batch": BatchCall}
_SUMMARIES = {
    "track": "Record an action a customer performed (Segment track)",
    "identify": "Tie a customer to their traits (Segment identify)",
    "page": "Record a web page view (Segment page)",
    "screen": "Record a mobile screen view (Segment screen)",
    "group": "Associate a customer with a group or account (Segment group)",
    "alias": "Merge an earlier identity into a user id (Segment alias)",
    "batch": "Send up to 2,500 calls of any type at once (Segment batch)",
}


def install_tracking_api(app: FastAPI) -> None:
    """Mount the endpoints and describe them in the OpenAPI document (they read their bodies raw).

    The app answers the POSTs faster when ``create_service_app`` was given ``TRACKING_CALLS`` too.
    """
    app.router.routes.extend(
        Route(path, call, methods=["POST"], name=f"post_{call.endpoint}") for path, call in TRACKING_CALLS.items()
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        models: list[type[BaseModel]] = [*_MODELS.values(), Accepted, Refusal]
        _, definitions = models_json_schema(
            [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(definitions.get("$defs", {}))
        components.setdefault("securitySchemes", {})["writeKey"] = {
            "type": "http",
            "scheme": "basic",
            "description": "The write key as user name (API tokens are refused here).",
        }
        for endpoint in ENDPOINTS:
            schema["paths"][f"/v1/{endpoint}"] = {"post": _operation(endpoint)}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operation(endpoint: str) -> dict[str, Any]:
    def body(model: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}

    return {
        "tags": ["tracking"],
        "summary": _SUMMARIES[endpoint],
        "operationId": f"post_{endpoint}",
        "security": [{"writeKey": []}],
        "requestBody": {"required": True, "content": body(_MODELS[endpoint].__name__)},
        "responses": {
            str(status): {"description": text, "content": body("Accepted" if status == 200 else "Refusal")}
            for status, text in RESPONSES.items()
        },
    }
