"""Erased ids are remembered only as keyed hashes, so a rebuild can skip them without keeping them.

A plain SHA-256 of an email-like id is reversed by hashing guesses; an HMAC is not, without the key.
The key is ``CLM_ERASURE_KEY``, else a secret generated once into the data folder.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from clm_shared.secrets import read_or_create_secret
from clm_shared.settings import Settings

KEY_FILE = "erasure-key"


def erasure_key(settings: Settings) -> bytes:
    if settings.erasure_key is not None:
        return settings.erasure_key.get_secret_value().encode()
    return read_or_create_secret(settings.data_dir / KEY_FILE).encode()


def erased_id_hash(customer_id: str, key: bytes) -> str:
    # HMAC over the id's SHA-256 (rather than the id), so rows stored unkeyed before can be re-keyed.
    return _keyed(hashlib.sha256(customer_id.encode()).hexdigest(), key)


def _keyed(sha256_hex: str, key: bytes) -> str:
    return hmac.new(key, sha256_hex.encode(), hashlib.sha256).hexdigest()


async def rekey_unkeyed_hashes(db: Any, key: bytes) -> int:
    """Replace the plain SHA-256 rows of older versions by keyed ones; returns how many there were."""
    rows = await db.fetch("SELECT id_hash FROM erased_ids WHERE NOT keyed FOR UPDATE")
    if rows:
        await db.execute(
            "UPDATE erased_ids SET id_hash = n.keyed_hash, keyed = true"
            " FROM unnest($1::text[], $2::text[]) AS n(old_hash, keyed_hash)"
            " WHERE erased_ids.id_hash = n.old_hash AND NOT erased_ids.keyed",
            [r[0] for r in rows],
            [_keyed(r[0], key) for r in rows],
        )
    return len(rows)
