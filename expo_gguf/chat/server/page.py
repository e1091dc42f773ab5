"""The chat page's files (``chat/page/``, the page's own folder) as the server hands them out:
``/`` is ``index.html``, ``/page/NAME`` any other file of that folder, nothing else (no listing,
no hidden files, no path out of it), with their content types and a Content-Security-Policy that
lets the page load and talk to nothing but this server."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.responses import FileResponse, Response

from .openai import ApiError

PAGE = Path(__file__).resolve().parent.parent / "page"
CSP = "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
PAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def page_file(folder: Path, name: str) -> Response:
    """``folder/name`` if it is a file of ``folder`` with a plain name, else a 404."""
    path = folder / name
    if not PAGE_NAME.fullmatch(name) or ".." in name or not path.is_file() or path.resolve().parent != folder:
        raise ApiError(404, f"no page file {name[:80]!r}", code="not_found")
    media = TYPES.get(path.suffix.lower(), "application/octet-stream")
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return FileResponse(path, media_type=media, headers=headers)
