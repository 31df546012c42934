"""HTTP bodies to validated Segment calls, or a rejection that names each bad event and field (pure)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from clm_shared.schemas.segment import CALL_MODELS, MAX_BATCH_EVENTS, SegmentCall, Timestamp

MAX_REQUEST_BYTES = 500 * 1024
MAX_EVENT_BYTES = 32 * 1024
ENDPOINTS = (*CALL_MODELS, "batch")
_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(Timestamp)


@dataclass(frozen=True)
class FieldError:
    """One bad field; ``index`` is the event's place in the batch (None for the request's own fields)."""

    index: int | None
    field: str
    message: str
    type: str | None = None


class Rejected(Exception):
    """The request is refused as a whole; nothing of it is published."""

    def __init__(self, status: int, message: str, errors: list[FieldError] | None = None, *, events: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.events = events  # how many events the refusal covers, for the rejected-events counter
        self.message = message
        self.errors = errors or []
        self.reason = {400: "malformed", 401: "auth", 413: "too_large", 422: "invalid"}.get(status, "other")

    def body(self) -> dict[str, Any]:
        return {
            "success": False,
            "message": self.message,
            "errors": [{"index": e.index, "type": e.type, "field": e.field, "message": e.message} for e in self.errors],
        }


@dataclass(frozen=True)
class ParsedRequest:
    calls: list[SegmentCall]
    write_key: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    integrations: dict[str, Any] = field(default_factory=dict)
    sent_at: datetime | None = None


def decode_body(raw: bytes, content_encoding: str | None) -> bytes:
    """Undo gzip (bounded, so a small bomb cannot expand past the request limit)."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise Rejected(413, f"request body is over {MAX_REQUEST_BYTES // 1024} KB")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return raw
    if encoding != "gzip":
        raise Rejected(400, f"unsupported Content-Encoding {content_encoding!r}: send gzip or none")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, MAX_REQUEST_BYTES + 1)
    except zlib.error as exc:
        raise Rejected(400, f"body is not valid gzip: {exc}") from exc
    if len(body) > MAX_REQUEST_BYTES:
        raise Rejected(413, f"decompressed request body is over {MAX_REQUEST_BYTES // 1024} KB")
    if not inflater.eof:
        raise Rejected(400, "body is not valid gzip: truncated stream")
    return body


def parse_request(body: bytes, endpoint: str) -> ParsedRequest:
    """Validate a whole request: one bad event rejects it with every error found."""
    return validate_payload(load_json(body), endpoint)


def load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected(400, f"body is not JSON: {exc}") from exc


def body_write_key(payload: Any) -> str | None:
    """The ``writeKey`` field Segment's HTTP API allows in place of the Basic header."""
    return _write_key(payload) if isinstance(payload, dict) else None


def validate_payload(payload: Any, endpoint: str) -> ParsedRequest:
    if not isinstance(payload, dict):
        raise Rejected(422, "body must be a JSON object", [FieldError(0, "(body)", "expected an object")])
    if endpoint == "batch":
        return _parse_batch(payload)
    _check_event_size(payload, 0)
    call = _validate(payload, endpoint, 0)
    if isinstance(call, list):
        raise Rejected(422, "the event is invalid", call)
    return ParsedRequest([call], write_key=_write_key(payload))


def _parse_batch(payload: dict[str, Any]) -> ParsedRequest:
    items = payload.get("batch")
    if not isinstance(items, list):
        raise Rejected(422, "batch must be a list of events", [FieldError(None, "batch", "expected a list")])
    if len(items) > MAX_BATCH_EVENTS:
        raise Rejected(
            422,
            f"a batch holds at most {MAX_BATCH_EVENTS} events",
            [FieldError(None, "batch", f"{len(items)} events")],
            events=len(items),
        )
    errors: list[FieldError] = []
    calls: list[SegmentCall] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(FieldError(index, "(event)", "expected an object"))
            continue
        _check_event_size(item, index)
        kind = item.get("type")
        if kind not in CALL_MODELS:
            errors.append(FieldError(index, "type", f"must be one of {', '.join(CALL_MODELS)}", str(kind)))
            continue
        result = _validate(item, kind, index)
        if isinstance(result, list):
            errors.extend(result)
        else:
            calls.append(result)
    top = _batch_fields(payload)
    if errors or isinstance(top, list):
        request_errors = top if isinstance(top, list) else []
        raise Rejected(
            422, "the batch has invalid events; nothing was accepted", errors + request_errors, events=len(items)
        )
    context, integrations, sent_at = top
    return ParsedRequest(calls, _write_key(payload), context, integrations, sent_at)


def _batch_fields(
    payload: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], datetime | None] | list[FieldError]:
    errors = []
    context, integrations = payload.get("context", {}), payload.get("integrations", {})
    for name, value in (("context", context), ("integrations", integrations)):
        if not isinstance(value, dict):
            errors.append(FieldError(None, name, "expected an object"))
    sent_at = None
    if payload.get("sentAt") is not None:
        try:
            sent_at = _TIMESTAMP.validate_python(payload["sentAt"])
        except ValidationError:
            errors.append(FieldError(None, "sentAt", "expected an ISO 8601 date-time"))
    return errors or (context, integrations, sent_at)


# How JSON spells U+0000; a raw NUL byte is not JSON at all (400). The text check is a cheap filter: a
# hit may be an escaped backslash followed by "u0000", which the walk then finds to be no NUL.
ESCAPED_NUL = b"\\u0000"


def refuse_nul(payload: Any, endpoint: str) -> None:
    """PostgreSQL text cannot hold U+0000: refuse it here, naming each field, rather than fail downstream."""
    errors: list[FieldError] = []
    if endpoint == "batch" and isinstance(payload, dict) and isinstance(payload.get("batch"), list):
        for index, item in enumerate(payload["batch"]):
            kind = item.get("type") if isinstance(item, dict) else None
            errors += [FieldError(index, path, _NUL_MESSAGE, str(kind)) for path in _nul_paths(item, "")]
        rest = {name: value for name, value in payload.items() if name != "batch"}
        errors += [FieldError(None, path, _NUL_MESSAGE) for path in _nul_paths(rest, "")]
    else:
        errors += [FieldError(0, path, _NUL_MESSAGE, endpoint) for path in _nul_paths(payload, "")]
    if errors:
        raise Rejected(422, "text cannot hold the NUL character (U+0000); nothing was accepted", errors)


_NUL_MESSAGE = "contains the NUL character (U+0000), which cannot be stored"


def _nul_paths(value: Any, path: str) -> list[str]:
    """Dotted paths (as the client spelled them) of every string and object key holding a NUL."""
    if isinstance(value, str):
        return [path or "(event)"] if "\x00" in value else []
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                found.append(here)
            found += _nul_paths(item, here)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            found += _nul_paths(item, f"{path}.{position}" if path else str(position))
    return found


def _check_event_size(item: dict[str, Any], index: int) -> None:
    size = len(orjson.dumps(item))
    if size > MAX_EVENT_BYTES:
        raise Rejected(413, f"event {index} is {size} bytes, over the {MAX_EVENT_BYTES // 1024} KB limit per event")


def _validate(item: dict[str, Any], kind: str, index: int) -> SegmentCall | list[FieldError]:
    model = CALL_MODELS[kind]
    try:
        return model.model_validate({**item, "type": kind})
    except ValidationError as exc:
        return [FieldError(index, _field_name(model, e["loc"]), e["msg"], kind) for e in exc.errors()]


def _field_name(model: type[SegmentCall], loc: tuple[int | str, ...]) -> str:
    """The field as the client spelled it (camelCase), also for errors raised on defaults."""
    if not loc:
        return "(event)"
    head = loc[0]
    field = model.model_fields.get(head) if isinstance(head, str) else None
    first = field.alias if field is not None and field.alias else str(head)
    return ".".join([first, *(str(part) for part in loc[1:])])


def _write_key(payload: dict[str, Any]) -> str | None:
    key = payload.get("writeKey")
    return key if isinstance(key, str) and key else None
