"""One key signs unsubscribe links and derives referral codes, so neither can be forged or guessed.

The key is ``CLM_CAMPAIGNS_SIGNING_KEY``, else a secret generated once into ``<data dir>/campaigns-key``
(every campaigns process and the CLI read the same file). Each use MACs under its own label, so an
unsubscribe MAC can never stand in for a referral code or a webhook signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import orjson

from clm_shared.secrets import read_or_create_secret
from clm_shared.settings import Settings

KEY_FILE = "campaigns-key"
_MAC_BYTES = 16  # 128 bits: unforgeable, and keeps the link short
REFERRAL_CODE_LENGTH = 10


class InvalidToken(ValueError):
    """An unsubscribe token that was altered, truncated or signed with another key."""


def signing_key(settings: Settings) -> bytes:
    if settings.campaigns_signing_key is not None:
        return settings.campaigns_signing_key.get_secret_value().encode()
    return read_or_create_secret(settings.data_dir / KEY_FILE).encode()


class Signer:
    """Unsubscribe tokens and referral codes under one key."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the campaigns signing key is empty")
        self._key = key

    def _mac(self, label: bytes, data: bytes) -> bytes:
        return hmac.new(self._key, label + b"\x00" + data, hashlib.sha256).digest()

    def unsubscribe_token(self, customer_id: str, campaign_id: str) -> str:
        """``<ids>.<mac>``, both base64url without padding, so the token fits a URL path segment."""
        body = _b64(orjson.dumps([customer_id, campaign_id]))
        mac = _b64(self._mac(b"unsubscribe", body.encode())[:_MAC_BYTES])
        return f"{body}.{mac}"

    def verify_unsubscribe(self, token: str) -> tuple[str, str]:
        """The ``(customer_id, campaign_id)`` a token was made for; ``InvalidToken`` if it was not made here."""
        body, dot, mac = token.partition(".")
        if not dot or not body or not mac:
            raise InvalidToken("the unsubscribe link is not valid")
        expected = _b64(self._mac(b"unsubscribe", body.encode())[:_MAC_BYTES])
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            raise InvalidToken("the unsubscribe link is not valid")
        try:
            ids = orjson.loads(_unb64(body))
        except (ValueError, binascii.Error):
            raise InvalidToken("the unsubscribe link is not valid") from None
        if not (isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, str) for i in ids)):
            raise InvalidToken("the unsubscribe link is not valid")
        return ids[0], ids[1]

    def referral_code(self, customer_id: str) -> str:
        """Ten upper-case base32 characters (50 bits), the same for a customer as long as the key stays."""
        digest = self._mac(b"referral", customer_id.encode())
        return base64.b32encode(digest).decode()[:REFERRAL_CODE_LENGTH]


def signer_for(settings: Settings) -> Signer:
    """The signer of this installation; reads (or creates) the key file, so build it once at wiring."""
    return Signer(signing_key(settings))


def unsubscribe_url(settings: Settings, token: str) -> str:
    return f"{settings.campaigns_public_url.rstrip('/')}/v1/unsubscribe/{token}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
