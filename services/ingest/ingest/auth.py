"""Write-key checks: Segment's Basic auth (key as user name) or a ``writeKey`` body field."""

from __future__ import annotations

import base64
import binascii

from clm_shared.access.cache import SecretHashes


def key_from_basic_auth(header: str | None) -> str | None:
    """The user name of an HTTP Basic header; None when absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0]
    return user or None


# hash -> source name of every active write key; the cache shared with the API tokens.
WriteKeys = SecretHashes[str]
