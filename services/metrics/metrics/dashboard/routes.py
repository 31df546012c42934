"""The dashboard's page and static files: open routes, since they hold no data.

The browser cannot send a bearer token when it navigates, so the page asks for a read token and
its script sends it with every API call; the data routes stay behind ``require_token``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent / "static"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# Nothing the page loads may come from outside the platform; ECharts sets styles from script and
# its canvas exports images as data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new release of the page must not meet an old script in the browser's cache.
    "Cache-Control": "no-cache",
}


def _static_files() -> dict[str, Path]:
    """The folder's files by name, read once: a request can only name one of them (no traversal)."""
    return {path.name: path for path in STATIC_DIR.iterdir() if path.is_file()}


def _serve(path: Path) -> FileResponse:
    media_type = MEDIA_TYPES.get(path.suffix, "text/plain; charset=utf-8")
    return FileResponse(path, media_type=media_type, headers=SECURITY_HEADERS)


dashboard_router = APIRouter(tags=["dashboard"])
_FILES = _static_files()


@dashboard_router.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> FileResponse:
    """The dashboard's HTML; its script fetches the data from the metrics API with a read token."""
    return _serve(_FILES["index.html"])


@dashboard_router.get("/dashboard/static/{file}", include_in_schema=False)
async def dashboard_static(file: str) -> FileResponse:
    """One file of the dashboard's static folder, by its exact name."""
    path = _FILES.get(file)
    if path is None:
        raise HTTPException(status_code=404, detail={"field": "file", "error": "no such dashboard file"})
    return _serve(path)
