"""Stored customer states carry a version; older rows are upgraded step by step as they are loaded.

When ``CustomerState`` changes shape, bump ``STATE_VERSION`` and add the step from the previous
version to ``UPGRADES``: stored rows then load (and are written back in the new shape when next
touched) instead of failing validation.
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

_ENCODER = msgspec.json.Encoder()
_RAW = msgspec.json.Decoder(RawState)


class StoredStateError(ValueError):
    """A stored state this engine cannot read (written by a newer engine, or not a state at all)."""


def dump_state(state: CustomerState) -> bytes:
    """The stored form of a state: a JSON object with the version in it."""
    return _ENCODER.encode(state)


def load_state(stored: str | bytes) -> CustomerState:
    """A stored row as the current ``CustomerState``, upgraded when it is older."""
    # Decoding to a dict first tells a row without a version (0) from one of the current version;
    # msgspec's convert then types it, both in C.
    raw = _RAW.decode(stored)
    if raw.get("version") != STATE_VERSION:
        raw = upgrade(raw)
    try:
        return msgspec.convert(raw, CustomerState)
    except msgspec.ValidationError as exc:
        raise StoredStateError(f"stored customer state is not valid: {exc}") from exc


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
