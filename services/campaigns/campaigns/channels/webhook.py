"""Campaign webhooks: a signed JSON POST, so the receiver can tell it came from this platform, unaltered.

The signature is ``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` in ``X-CLM-Signature``; the
timestamp is signed too so a captured request cannot be replayed later (receivers check its age).
``X-CLM-Delivery-Id`` stays the same across retries of one send so the receiver can drop a duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from types import TracebackType
from typing import Any

import httpx
import orjson

from campaigns.channels import PermanentFailure, TransientFailure
from clm_shared.secrets import read_or_create_secret
from clm_shared.settings import Settings

SIGNATURE_HEADER = "X-CLM-Signature"
TIMESTAMP_HEADER = "X-CLM-Timestamp"
DELIVERY_HEADER = "X-CLM-Delivery-Id"


WEBHOOK_SECRET_FILE = "webhook-secret"


def webhook_key(settings: Settings) -> bytes:
    """``CLM_WEBHOOK_SECRET``, else one generated into ``<data dir>/webhook-secret``.

    Never the campaigns signing key: a receiver holding that could forge unsubscribe links.
    """
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value().encode()
    return read_or_create_secret(settings.data_dir / WEBHOOK_SECRET_FILE).encode()


def sign(key: bytes, timestamp: int | str, body: bytes) -> str:
    return "sha256=" + hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_webhook_signature(
    secret: str | bytes, timestamp: str | int, body: bytes, header: str, *, now: float, tolerance_s: float = 300
) -> bool:
    """True when ``header`` signs ``body`` at ``timestamp`` with ``secret`` and the timestamp is recent."""
    key = secret.encode() if isinstance(secret, str) else secret
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent_at) > tolerance_s:
        return False
    return hmac.compare_digest(sign(key, sent_at, body).encode(), header.strip().encode())


class WebhookChannel:
    """POSTs to campaign webhook URLs; pass a shared ``httpx.AsyncClient`` or let it own one (then ``aclose``)."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self._key = webhook_key(settings)
        self.timeout = settings.webhook_timeout_s
        self._owns_client = client is None
        # No redirects: a signed request is meant for the URL in the campaign, not wherever it points to.
        self.client = client if client is not None else httpx.AsyncClient(follow_redirects=False)

    async def send(self, url: str, payload: dict[str, Any], *, delivery_id: str) -> None:
        """Deliver one payload; ``TransientFailure`` to retry later, ``PermanentFailure`` to give up."""
        body = orjson.dumps(payload)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "clm-campaigns",
            DELIVERY_HEADER: delivery_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._key, timestamp, body),
        }
        try:
            answer = await self.client.post(
                url, content=body, headers=headers, timeout=self.timeout, follow_redirects=False
            )
        except httpx.TimeoutException:
            raise TransientFailure(f"webhook timed out after {self.timeout:g}s") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            raise PermanentFailure("webhook URL is not a valid http(s) URL") from None
        except httpx.HTTPError as exc:  # the URL is left out of the message: it may hold a token
            raise TransientFailure(f"webhook request failed ({type(exc).__name__})") from None
        status = answer.status_code
        if 200 <= status < 300:
            return
        if status >= 500 or status in (408, 429):
            raise TransientFailure(f"webhook answered HTTP {status}")
        raise PermanentFailure(f"webhook answered HTTP {status}")

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> WebhookChannel:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
