"""Delivery channels (email, webhook) and the two ways a send can fail.

The delivery code retries a ``TransientFailure`` with back-off and gives up at once on a
``PermanentFailure``. Both messages are safe to log: they never hold an address, URL or secret.
"""

from __future__ import annotations


class ChannelFailure(Exception):
    """A send that did not go through; the message names the protocol step and code only."""


class TransientFailure(ChannelFailure):
    """Worth retrying later: the server was down, slow, busy or asked us to come back."""


class PermanentFailure(ChannelFailure):
    """Retrying will not help: the recipient or the content was refused."""


class RecipientRefused(PermanentFailure):
    """The address itself was refused (a 5xx on RCPT, or no address at all): a hard bounce."""
