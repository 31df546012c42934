"""Turn a settings validation error into the one line an operator needs."""

from __future__ import annotations

from pydantic import ValidationError


def describe_settings_error(error: ValidationError) -> str:
    """`CLM_FOO: reason` for every bad setting, on one line each.

    The rejected value is never repeated: a database URL carries its password, a key is a secret,
    and these lines end up in terminals and log files.
    """
    lines = []
    for item in error.errors():
        name = "CLM_" + "_".join(str(part) for part in item["loc"]).upper()
        lines.append(f"{name}: {item['msg']}")
    return "\n".join(lines)
