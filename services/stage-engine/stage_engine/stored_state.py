"""Stored customer states carry a version; older rows are upgraded step by step as they are loaded.

When ``CustomerState`` changes shape, bump ``STATE_VERSION`` and add the step from the previous
version to ``UPGRADES``: stored rows then load (and are written back in the new shape when next
touched) instead of failing validation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from stage_engine.lifecycle import STATE_VERSION, CustomerState

RawState = dict[str, Any]

# version n -> the step that turns a version-n row into version n+1.
UPGRADES: dict[int, Callable[[RawState], RawState]] = {
    0: lambda raw: raw,  # rows written before states had a version: the same fields
}


class StoredStateError(ValueError):
    """A stored state this engine cannot read (written by a newer engine)."""


def load_state(stored: str | bytes) -> CustomerState:
    """A stored row as the current ``CustomerState``, upgraded when it is older."""
    try:
        # The hot path: a row of the current version validates straight from its JSON.
        state: CustomerState | None = CustomerState.model_validate_json(stored)
    except ValidationError:
        state = None  # an older (or newer) shape: the upgrade below says which
    if state is not None and "version" in state.model_fields_set and state.version == STATE_VERSION:
        return state
    raw: RawState = orjson.loads(stored)
    return CustomerState.model_validate(upgrade(raw))


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
