"""The API's pages, /docs (Swagger UI) and /redoc, served from files in the installed packages,
and the limits of this server as its OpenAPI describes them.

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

from serving.settings import Settings

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


# Each limit a request meets, as the OpenAPI's description lists them with this server's values.
# A request past one answers 413 (sizes, counts), 429 (load) or 408/503 (time), naming the setting.
LIMITS = (
    ("max_request_bytes", "bytes in one request body"),
    ("max_images_per_request", "images in one request"),
    ("max_image_bytes", "bytes of one encoded image"),
    ("max_image_pixels", "pixels of one image, by its header"),
    ("max_request_pixels", "pixels of all the images of one request"),
    ("max_texts_per_request", "texts in one /embed/text request"),
    ("max_text_chars", "characters of one text, class name, template or label"),
    ("max_vector_dim", "values in one vector sent (and it must be the index's dimension)"),
    ("max_metadata_bytes", "bytes of one index item's metadata, as JSON"),
    ("max_classes", "classes in one /zero-shot request"),
    ("max_templates", "prompt templates in one /zero-shot request"),
    ("max_prompts", "classes × templates in one /zero-shot request"),
    ("max_k", "neighbours one search may ask for"),
    ("max_explain_grid", "patches per side of one /explain map (grid² + 1 model rows)"),
    ("max_queue", "rows waiting per model (past it: 429)"),
    ("max_inflight_requests", "requests in progress at once (past it: 429)"),
    ("max_inflight_bytes", "bytes of request bodies held at once (past it: 429)"),
    ("max_queued_jobs", "jobs waiting to run (past it: 429)"),
    ("max_header_bytes", "bytes of a request's line and headers (past it: 431)"),
    ("request_timeout_s", "seconds a request may take (past it: 503)"),
    ("body_timeout_s", "seconds for a request body to arrive (past it: 408)"),
    ("header_timeout_s", "seconds for a request's headers to arrive (past it: 408)"),
)


def describe_limits(settings: Settings) -> str:
    """The OpenAPI description: what the server does, and each limit with this server's value and
    the setting that changes it. Tokens per text are each text model's own context length."""
    rows = "\n".join(f"| {what} | {getattr(settings, field):,} | `EMBEDSERVE_{field.upper()}` |" for field, what in LIMITS)
    return ("Embeddings, zero-shot labels, nearest neighbours and word analogies.\n\n"
            "**Limits of this server.** A request past one is refused with the status shown and a message naming "
            "the setting; texts longer than a model's context (its tokenizer's) are a 422.\n\n"
            "| limit | value | setting |\n| --- | ---: | --- |\n" + rows)
