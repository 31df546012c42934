"""Campaign email over SMTP (aiosmtplib): one multipart/alternative message per send.

Failures are classified by SMTP reply code only. The server's reply text is dropped because it often
quotes the recipient's address, and these messages end up in logs and in the sends table.
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, parseaddr

import aiosmtplib

from campaigns.channels import PermanentFailure, RecipientRefused, TransientFailure
from campaigns.templates import RenderedEmail
from clm_shared.settings import Settings

LOCAL_SINK_HOST = "127.0.0.1"
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
# Control characters (C0, DEL, C1) and the Unicode line separators: in a header each could end it or break it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def recipient(to: str) -> Address:
    """The one address a customer's ``email`` trait holds, display name kept, or ``RecipientRefused``.

    The trait is the customer's text: a second address after a comma would be shown in the To header,
    a line break or other control character would end the header or break the message, and an address
    the header cannot spell (a non-ASCII local part) would be mangled on the way.
    """
    refused = RecipientRefused("the recipient address is not valid")
    if _CONTROL.search(to):
        raise refused
    pairs = getaddresses([to])
    if len(pairs) != 1 or "@" not in pairs[0][1]:
        raise refused
    try:
        return Address(display_name=pairs[0][0], addr_spec=pairs[0][1])
    except ValueError:  # the header registry's defects (InvalidHeaderDefect and the like) are ValueErrors
        raise refused from None


def build_message(
    settings: Settings, to: str | Address, rendered: RenderedEmail, *, message_id: str, unsubscribe_url: str
) -> EmailMessage:
    """The message as sent; the Message-ID is derived from the send so a receiver can drop a retried copy."""
    if not _MESSAGE_ID.match(message_id):
        raise ValueError("message_id: letters, digits, '.', '_' and '-' only")
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = rendered.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{message_id}@clm>"
    # RFC 2369 and RFC 8058: mail clients show an unsubscribe button that POSTs to the link.
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


class EmailChannel:
    """Sends through ``CLM_SMTP_*``; with no ``CLM_SMTP_HOST``, through the local sink `clm up` runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = settings.smtp_host or LOCAL_SINK_HOST
        self.sender = parseaddr(settings.mail_from)[1]

    async def send(self, to: str, rendered: RenderedEmail, *, message_id: str, unsubscribe_url: str) -> None:
        """Deliver one message; ``TransientFailure`` to retry later, ``PermanentFailure`` to give up."""
        address = recipient(to)
        message = build_message(
            self.settings, address, rendered, message_id=message_id, unsubscribe_url=unsubscribe_url
        )
        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password is not None else None
        try:
            await aiosmtplib.send(
                message,
                sender=self.sender,
                recipients=[address.addr_spec],
                hostname=self.host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=password if s.smtp_username is not None else None,
                use_tls=s.smtp_tls == "tls",
                start_tls=s.smtp_tls == "starttls",  # False, not None: "none" must never upgrade on its own
                timeout=s.smtp_timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refused.code for refused in exc.recipients]
            raise _by_code(codes[0] if codes else 550, "RCPT") from None
        except aiosmtplib.SMTPRecipientRefused as exc:
            raise _by_code(exc.code, "RCPT") from None
        except aiosmtplib.SMTPDataError as exc:
            raise _by_code(exc.code, "DATA") from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            # A login problem is the operator's to fix, not the recipient's: keep the send for a retry.
            raise TransientFailure(f"SMTP {exc.code} on AUTH: check CLM_SMTP_USERNAME and CLM_SMTP_PASSWORD") from None
        except aiosmtplib.SMTPSenderRefused as exc:
            raise TransientFailure(f"SMTP {exc.code} on MAIL FROM: check CLM_MAIL_FROM") from None
        except aiosmtplib.SMTPNotSupported:
            raise TransientFailure("the SMTP server does not support the configured CLM_SMTP_TLS or login") from None
        except aiosmtplib.SMTPResponseException as exc:  # greeting, HELO and the like
            raise TransientFailure(f"SMTP {exc.code} from the server") from None
        except aiosmtplib.SMTPTimeoutError:
            raise TransientFailure(f"SMTP timed out after {s.smtp_timeout_s:g}s") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientFailure(f"SMTP connection failed ({type(exc).__name__})") from None


def _by_code(code: int, stage: str) -> TransientFailure | PermanentFailure:
    if 400 <= code < 500:
        return TransientFailure(f"SMTP {code} on {stage}")
    if stage == "RCPT":
        return RecipientRefused(f"SMTP {code} on {stage}")
    return PermanentFailure(f"SMTP {code} on {stage}")
