"""The playground: `GET /` is a page that calls the public API (zero-shot, search, words, jobs),
and `GET /playground/<file>` its scripts and style sheet. Left out of the OpenAPI: it is a page,
not part of the API it calls."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from serving.playground import ASSET_PREFIX, ASSETS, FOLDER, PAGE, PAGE_PATH

router = APIRouter(include_in_schema=False)

# Nothing but this server's own files: no inline script or style, no other origin, no framing.
# Bars are sized through the CSSOM (element.style), which a CSP allows; thumbnails arrive as
# blob: URLs (fetched with the API key) and explanation overlays as data: URLs.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",  # fetched anew each load (a few KB), so an upgraded server never runs an old script
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _file(path: Path, media_type: str):
    def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers=HEADERS)

    return serve


router.add_api_route(PAGE_PATH, _file(PAGE, "text/html; charset=utf-8"), methods=["GET"])
for _name, _media_type in ASSETS.items():  # one route per file: no path parameter, so no path to escape through
    router.add_api_route(ASSET_PREFIX + _name, _file(FOLDER / _name, _media_type), methods=["GET"])
