"""Turn a settings validation error into the one line an operator needs."""

from __future__ import annotations

from pydantic import ValidationError

# Settings whose values never appear in a message, not even a wrong one.
SECRET_SETTINGS = frozenset({"admin_token"})


def describe_settings_error(error: ValidationError) -> str:
    """`CLM_FOO: reason` for every bad setting, on one line each."""
    lines = []
    for item in error.errors():
        name = "CLM_" + "_".join(str(part) for part in item["loc"]).upper()
        shown = "a hidden value" if item["loc"] and item["loc"][0] in SECRET_SETTINGS else repr(item.get("input"))
        lines.append(f"{name}: {item['msg']} (got {shown})")
    return "\n".join(lines)
