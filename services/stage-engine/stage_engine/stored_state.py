"""Stored customer states carry a version; older rows are upgraded step by step as they are loaded.

When ``CustomerState`` changes shape, bump ``STATE_VERSION`` and add the step from the previous
version to ``UPGRADES``: stored rows then load (and are written back in the new shape when next
touched) instead of failing validation.

States are stored as MessagePack (``bytea``): PostgreSQL stores the bytes without parsing them, where
a ``jsonb`` column parsed and re-rendered every state on every batch (half of the engine's write
time), and times take 6 bytes instead of a 25-character string. Rows written as JSON by earlier
versions (migration 0006 kept their text) still load: the first byte tells the two apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from stage_engine.lifecycle import STATE_VERSION, CustomerState

RawState = dict[str, Any]

# version n -> the step that turns a version-n row into version n+1.
UPGRADES: dict[int, Callable[[RawState], RawState]] = {
    0: lambda raw: raw,  # rows written before states had a version: the same fields
}

_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder(CustomerState)
_UNPACK_RAW = msgspec.msgpack.Decoder(RawState)
_JSON = msgspec.json.Encoder()
_JSON_RAW = msgspec.json.Decoder(RawState)


class StoredStateError(ValueError):
    """A stored state this engine cannot read (written by a newer engine, or not a state at all)."""


def dump_state(state: CustomerState) -> bytes:
    """The stored form of a state: a MessagePack map with the version in it.

    A trait MessagePack cannot hold (an integer over 64 bits) keeps the whole state in JSON, which the
    loader reads as well: one odd trait must not fail its batch.
    """
    try:
        return _PACK.encode(state)
    except OverflowError:
        return _JSON.encode(state)


def load_state(stored: str | bytes) -> CustomerState:
    """A stored row as the current ``CustomerState``, upgraded when it is older."""
    if isinstance(stored, str):
        stored = stored.encode()
    if stored[:1] not in (b"{", b" "):
        # The common case in C: a current row decodes straight to the typed state.
        try:
            state = _UNPACK.decode(stored)
        except msgspec.DecodeError:
            state = None  # an older or newer shape, or not a state: the checked path below says which
        if state is not None and state.version == STATE_VERSION:
            return state
        raw = _decode_raw(_UNPACK_RAW, stored)
    else:
        raw = _decode_raw(_JSON_RAW, stored)
    if raw.get("version") != STATE_VERSION:
        raw = upgrade(raw)
    try:
        return msgspec.convert(raw, CustomerState)
    except msgspec.ValidationError as exc:
        raise StoredStateError(f"stored customer state is not valid: {exc}") from exc


def _decode_raw(decoder: msgspec.json.Decoder[RawState] | msgspec.msgpack.Decoder[RawState], stored: bytes) -> RawState:
    try:
        return decoder.decode(stored)
    except msgspec.DecodeError as exc:
        raise StoredStateError(f"stored customer state is not a state: {exc}") from exc


def upgrade(raw: RawState, upgrades: dict[int, Callable[[RawState], RawState]] = UPGRADES) -> RawState:
    version = raw.pop("version", 0)
    if not isinstance(version, int) or version > STATE_VERSION:
        raise StoredStateError(
            f"stored customer state has version {version!r}, newer than this engine's {STATE_VERSION}:"
            " run the newer stage engine"
        )
    while version < STATE_VERSION:
        raw = upgrades[version](raw)
        version += 1
    raw["version"] = version
    return raw
