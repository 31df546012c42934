"""Erased ids are remembered only as hashes, so a rebuild can skip them without keeping them."""

from __future__ import annotations

import hashlib


def erased_id_hash(customer_id: str) -> str:
    return hashlib.sha256(customer_id.encode()).hexdigest()
