"""The fast path of ``requests.py``: Segment calls decoded and checked by msgspec Structs in one C pass (pure).

It only ever accepts or gives up. Anything it is not sure about (an unknown field, an id sent as a
float, a date-time in a rarer format, a large event, any error) returns None, and the request goes
through the pydantic path in ``requests.py``, which decides it and writes the 422 that names the
index and field. So what the fast path accepts is exactly what the pydantic path accepts, with the
same values; ``tests/unit/ingest/test_wire.py`` compares the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Union

import msgspec
from msgspec import UNSET, Meta, Raw, Struct

from clm_shared.schemas.segment import MAX_BATCH_EVENTS, MAX_MESSAGE_ID_LENGTH
from ingest.requests import MAX_EVENT_BYTES

# orjson, which the pydantic path reads with, makes integers outside [-2**63, 2**64 - 1] floats (and
# msgspec bounds stop at 64 signed bits): ids outside those go to the pydantic path.
_Int = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
_Text = Annotated[str, Meta(min_length=1, max_length=1024)]
_MessageId = Annotated[str, Meta(min_length=1, max_length=MAX_MESSAGE_ID_LENGTH)]
_Object = dict[str, Any]

# A compact re-encoding (what the size limit measures) is at most 4.5x its JSON text ("9e15" becomes
# "9000000000000000.0"); events below this size cannot be over the limit.
_SURELY_SMALL = MAX_EVENT_BYTES // 5

# The date-times the fast path reads itself; pydantic reads these to the same instant and offset.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})?", re.ASCII)


class _Call(Struct, rename="camel", forbid_unknown_fields=True):
    # Every field is decoded (none is skipped unread), so a body msgspec accepts is one orjson accepts.
    message_id: _MessageId | None = None
    user_id: str | _Int | None = None
    anonymous_id: str | _Int | None = None
    context: _Object = {}
    integrations: _Object = {}
    timestamp: str | None = None
    sent_at: str | None = None
    write_key: str | None = None


class WireTrack(_Call, kw_only=True):
    event: _Text
    properties: _Object = {}


class WireIdentify(_Call):
    traits: _Object = {}


class WirePage(_Call):
    name: str | None = None
    category: str | None = None
    properties: _Object = {}


class WireScreen(WirePage):
    pass


class WireGroup(_Call, kw_only=True):
    group_id: str | _Int
    traits: _Object = {}


class WireAlias(_Call, kw_only=True):
    previous_id: str | _Int


WireCall = WireTrack | WireIdentify | WirePage | WireScreen | WireGroup | WireAlias
CALL_TYPES: dict[type[WireCall], str] = {
    WireTrack: "track",
    WireIdentify: "identify",
    WirePage: "page",
    WireScreen: "screen",
    WireGroup: "group",
    WireAlias: "alias",
}


def _single(model: type[_Call]) -> type[Any]:
    """The single-call body: the endpoint decides the type, so a ``type`` field is read and ignored."""
    return msgspec.defstruct(
        model.__name__ + "Single", [("type", Any, UNSET)], bases=(model,), rename="camel", forbid_unknown_fields=True
    )


def _item(model: type[_Call], kind: str) -> type[Any]:
    """A batch item: its ``type`` field picks the model (a tagged union)."""
    return msgspec.defstruct(
        model.__name__ + "Item",
        [],
        bases=(model,),
        tag_field="type",
        tag=kind,
        rename="camel",
        forbid_unknown_fields=True,
    )


_SINGLE_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(_single(model)) for model, kind in CALL_TYPES.items()
}
_ITEM_KINDS = {_item(model, kind): kind for model, kind in CALL_TYPES.items()}
_ITEM_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Union[tuple(_ITEM_KINDS)])  # noqa: UP007


class _Batch(Struct, rename="camel", forbid_unknown_fields=True):
    batch: Annotated[list[Raw], Meta(max_length=MAX_BATCH_EVENTS)]
    context: _Object = {}
    integrations: _Object = {}
    sent_at: str | None = None
    write_key: Any = None  # read (so checked as JSON) but not validated, as in the pydantic path


_BATCH_DECODER = msgspec.json.Decoder(_Batch)


# One accepted call: (type, call, userId as text, anonymousId as text), an empty id as None. A plain
# tuple: building a NamedTuple runs Python code, a third of the per-call checks' time.
WireEntry = tuple[str, WireCall, str | None, str | None]


@dataclass(frozen=True)
class WireRequest:
    """Calls the fast path accepted, with the batch-level fields that fill what an item lacks."""

    calls: list[WireEntry]
    context: dict[str, Any]
    integrations: dict[str, Any]
    sent_at: datetime | None
    times: dict[str, datetime]  # every date-time text of the request, read once
    missing_ids: int = 0  # calls without a messageId: ingest generates one for each


def decode_request(body: bytes, endpoint: str) -> WireRequest | None:
    """The request's calls, or None when the pydantic path must decide (then it may well be valid)."""
    times: dict[str, datetime] = {}
    try:
        if endpoint != "batch":
            if len(body) > _SURELY_SMALL:
                return None
            entry = _entry(endpoint, _SINGLE_DECODERS[endpoint].decode(body), times)
            if entry is None:
                return None
            return WireRequest([entry], {}, {}, None, times, 0 if entry[1].message_id else 1)
        request = _BATCH_DECODER.decode(body)
        calls: list[WireEntry] = []
        missing_ids = 0
        decode, kinds = _ITEM_DECODER.decode, _ITEM_KINDS
        for raw in request.batch:
            if len(raw) > _SURELY_SMALL:
                return None
            item = decode(raw)
            entry = _entry(kinds[type(item)], item, times)
            if entry is None:
                return None
            calls.append(entry)
            if not item.message_id:
                missing_ids += 1
        sent_at = _read_time(request.sent_at, times) if request.sent_at is not None else None
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
        return None
    return WireRequest(calls, request.context, request.integrations, sent_at, times, missing_ids)


def _read_time(text: str, times: dict[str, datetime]) -> datetime:
    value = times.get(text)
    if value is None:
        value = times[text] = parse_time(text)
    return value


def _entry(kind: str, call: WireCall, times: dict[str, datetime]) -> WireEntry | None:
    """What pydantic checks beyond the types (an identity, ids of at most 1,024 characters as text), or None."""
    # msgspec never decodes a JSON boolean as an int, so isinstance is the same test as in ``id_text``.
    user_id = str(call.user_id) if isinstance(call.user_id, int) else call.user_id
    anonymous_id = str(call.anonymous_id) if isinstance(call.anonymous_id, int) else call.anonymous_id
    if not (user_id or anonymous_id):
        return None
    if (user_id and len(user_id) > 1024) or (anonymous_id and len(anonymous_id) > 1024):
        return None
    if kind == "group" and not 0 < len(id_text(call.group_id) or "") <= 1024:  # type: ignore[union-attr]
        return None
    if kind == "alias" and not 0 < len(id_text(call.previous_id) or "") <= 1024:  # type: ignore[union-attr]
        return None
    # A date-time the fast path does not read raises ValueError.
    if call.timestamp is not None and call.timestamp not in times:
        times[call.timestamp] = parse_time(call.timestamp)
    if call.sent_at is not None and call.sent_at not in times:
        times[call.sent_at] = parse_time(call.sent_at)
    return kind, call, user_id or None, anonymous_id or None


def id_text(value: str | int | None) -> str | None:
    """Ids as text, as ``segment._id_to_text`` keeps numbers."""
    return str(value) if type(value) is int else value  # type: ignore[return-value]


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time; a time without an offset is UTC. Raises ValueError for anything else."""
    if not _DATE_TIME.fullmatch(text):
        raise ValueError(f"not a date-time the fast path reads: {text!r}")
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
