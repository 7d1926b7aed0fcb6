"""The API's pages, /docs (Swagger UI) and /redoc, served from files in the installed packages.

FastAPI's own pages load their JavaScript and CSS from a CDN, so on a machine without internet
access (or behind a strict proxy) /docs is blank. The fastapi-offline package carries the same
files; they are served here under /docs/static.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
STATIC_URL = "/docs/static"


def install_docs(app: FastAPI) -> None:
    """/docs and /redoc for `app`, which must be built with docs_url=None and redoc_url=None."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="docs-static")
    title = f"{app.title} — API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=title,
                                   swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{STATIC_URL}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title=title, redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{STATIC_URL}/favicon.png", with_google_fonts=False)
