"""One-click unsubscribe (RFC 8058): the signed link in every campaign email, served without a token.

GET only shows a confirmation page, since mail scanners fetch links; the POST (the page's button,
or a mail client's one-click ``List-Unsubscribe=One-Click``) records the suppression. The token is
the signature: nothing in the page or an error names the customer.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import escape

from campaigns.api import Engine
from campaigns.consumers import suppress
from campaigns.signing import InvalidToken, Signer, signer_for
from clm_shared.transactions import transaction

unsubscribe_router = APIRouter(tags=["unsubscribe"])

_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32rem; margin: 3rem auto;"><h1>{title}</h1>{body}</body></html>"""


def _signer(request: Request) -> Signer:
    state = request.app.state
    if not hasattr(state, "unsubscribe_signer"):
        state.unsubscribe_signer = signer_for(state.ctx.settings)
    signer: Signer = state.unsubscribe_signer
    return signer


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=escape(title), body=body), status_code=status, headers=_HEADERS)


def _invalid() -> HTMLResponse:
    return _page("This link is not valid", "<p>It may be incomplete. Please use the link in the email.</p>", 400)


@unsubscribe_router.get("/v1/unsubscribe/{token}", response_class=HTMLResponse)
async def confirm_page(token: str, request: Request) -> HTMLResponse:
    try:
        _signer(request).verify_unsubscribe(token)
    except InvalidToken:
        return _invalid()
    form = (
        f'<form method="post" action="/v1/unsubscribe/{escape(token)}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        "<p>You will no longer receive our lifecycle emails.</p>"
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _page("Unsubscribe?", form)


@unsubscribe_router.post("/v1/unsubscribe/{token}", response_class=HTMLResponse)
async def unsubscribe(token: str, request: Request, engine: Engine) -> HTMLResponse:
    try:
        customer_id, _campaign_id = _signer(request).verify_unsubscribe(token)
    except InvalidToken:
        return _invalid()
    async with transaction(engine) as db:
        await suppress(db, {customer_id: "unsubscribed"}, {customer_id: datetime.now(UTC)})
    return _page("You are unsubscribed", "<p>You will not receive lifecycle emails from us any more.</p>")
