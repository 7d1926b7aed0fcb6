"""Errors are types: one exception per kind of bad input, mapped to an HTTP status in one place.

Every message says what to fix. The handlers turn them into `{"detail": message, "error": type}`
so clients can branch on `error` and show `detail`. The inference core raises its own errors
(runtime/ knows nothing of HTTP); `RUNTIME_ERRORS` gives each its status here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import Scope, Send

from runtime.bundle import BundleError
from runtime.encoders.base import EncoderUnavailable
from runtime.files import InvalidName
from runtime.preprocessing import ImageTooLarge, InvalidImage, UnsupportedImage
from runtime.sources import SourceError, SourceForbidden
from runtime.tokens import InvalidText


class ServingError(Exception):
    """Base for errors a client caused; `status_code` and `error` are what it answers."""

    status_code = 400
    error = "bad_request"
    headers: dict[str, str] = {}

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnknownWord(ServingError):
    status_code = 404
    error = "unknown_word"


class UnknownModel(ServingError):
    status_code = 404
    error = "unknown_model"


class UnknownIndex(ServingError):
    status_code = 404
    error = "unknown_index"


class UnknownId(ServingError):
    status_code = 404
    error = "unknown_id"


class UnknownJob(ServingError):
    status_code = 404
    error = "unknown_job"


class Forbidden(ServingError):
    status_code = 403
    error = "forbidden"


class InvalidInput(ServingError):
    status_code = 422
    error = "invalid_input"


class Conflict(ServingError):
    """What the request was prepared against changed meanwhile: sending it again works."""

    status_code = 409
    error = "conflict"


class PayloadTooLarge(ServingError):
    status_code = 413
    error = "payload_too_large"


class UnsupportedMediaType(ServingError):
    status_code = 415
    error = "unsupported_media_type"


class Overloaded(ServingError):
    """The model's queue is full: the client should come back after Retry-After seconds."""

    status_code = 429
    error = "overloaded"
    headers = {"Retry-After": "1"}


class JobsFull(Overloaded):
    """The jobs queue is full: a job takes seconds to minutes, so the client waits longer than for a model."""

    headers = {"Retry-After": "30"}


class NotReady(ServingError):
    status_code = 503
    error = "not_ready"


# The inference core's errors, each answered as the serving error of the same meaning.
RUNTIME_ERRORS: dict[type[Exception], type[ServingError]] = {
    InvalidImage: InvalidInput,
    ImageTooLarge: PayloadTooLarge,
    UnsupportedImage: UnsupportedMediaType,
    InvalidText: InvalidInput,
    InvalidName: InvalidInput,  # a name that is a path, checked before it touches a file
    SourceForbidden: Forbidden,
    SourceError: InvalidInput,
    EncoderUnavailable: NotReady,
    BundleError: UnknownModel,  # a model, version or index that is not there (or cannot be read)
}


def unsupported_content_type(media_type: str) -> UnsupportedMediaType:
    """The 415 for a body that is neither a multipart form nor JSON."""
    return UnsupportedMediaType(f"content type {media_type!r} is not accepted; send multipart/form-data or application/json")


OPENAI_PREFIX = "/v1/"  # the OpenAI-compatible routes answer errors in OpenAI's shape


def error_body(path: str, status_code: int, error: str, message: str) -> dict:
    """The one error shape: {"detail", "error"}, or OpenAI's {"error": {...}} under /v1/."""
    if path.startswith(OPENAI_PREFIX):
        kind = "invalid_request_error" if status_code < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": error}}
    return {"detail": message, "error": error}


async def send_error(scope: Scope, send: Send, status_code: int, error: str, message: str,
                     headers: dict[str, str] | None = None, close: bool = False) -> None:
    """Answer in the one error shape from an ASGI middleware (limits, deadlines), which runs
    outside FastAPI's handlers; `close` asks the client to drop the connection."""
    body = json.dumps(error_body(scope["path"], status_code, error, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status_code, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ErrorResponse(BaseModel):
    """The one error shape, documented in the OpenAPI for every status a route can answer."""

    detail: str = Field(description="what went wrong and what to fix")
    error: str = Field(description="the kind of error, to branch on: invalid_input, unknown_model, overloaded, ...")


class OpenAIError(BaseModel):
    message: str = Field(description="what went wrong and what to fix")
    type: str = Field(description="invalid_request_error, or server_error for a 5xx")
    param: str | None = None
    code: str = Field(description="the kind of error, as `error` names it on the other routes")


class OpenAIErrorResponse(BaseModel):
    """The error shape under /v1/, OpenAI's."""

    error: OpenAIError


# What each error status means on this server, for the OpenAPI.
_ERROR_DESCRIPTIONS = {
    400: "a Host header the server does not answer to (or two of them), or a body that cannot be parsed",
    401: "no API key (when the server has keys): send Authorization: Bearer <key>",
    403: "an API key that is not accepted, or a path outside the server's data roots",
    404: "no such model, index, word, item, job or route",
    408: "the request body did not arrive within EMBEDSERVE_BODY_TIMEOUT_S",
    409: "the index moved to another model version while the request was being embedded: send it again",
    413: "more than a limit allows: body bytes, images, pixels, texts, characters, vector values, metadata bytes, "
         "classes × templates, items",
    415: "a content type or image format the route does not take",
    422: "a request that is not valid: the message says which field and why",
    429: "the model's queue (or the jobs queue) is full, or the server holds as many request bodies as it may: retry after "
         "Retry-After seconds",
    503: "not ready: models still loading, a model that failed to load, or a request past its time limit",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
# Every route may answer these: the Host and key checks, the body's size and pace, the server's
# load and the request's deadline are checked around every route, and request validation before
# its code. The probes (/healthz, /readyz, /metrics) are never refused for load nor timed out.
COMMON_ERRORS = (400, 401, 403, 408, 413, 422, 429, 503)
PROBE_ERRORS = (400, 401, 403, 408, 413, 422)


def error_responses(*statuses: int, openai: bool = False, common: tuple[int, ...] = COMMON_ERRORS) -> dict[int | str, dict]:
    """`responses=` for a route or router that can answer `statuses` (and `common`), each in the
    one error shape, or OpenAI's under /v1/."""
    model = OpenAIErrorResponse if openai else ErrorResponse
    return {status: {"model": model, "description": _ERROR_DESCRIPTIONS[status],
                     **({"headers": _RETRY_AFTER} if status == 429 else {})}
            for status in sorted({*common, *statuses})}


def _respond(request: Request, status_code: int, error: str, message: str,
             headers: dict[str, str] | None = None) -> JSONResponse:
    message = without_server_folders(message, getattr(request.app.state, "settings", None))
    return JSONResponse(status_code=status_code, content=error_body(request.url.path, status_code, error, message),
                        headers=headers)


async def _handle_serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return _respond(request, exc.status_code, exc.error, exc.message, exc.headers or None)


def without_server_folders(message: str, settings) -> str:
    """`message` with the server's own folders named, not shown: the inference core words its
    errors for the command line, where the artifacts folder's path helps; a client it would tell
    only how the server's disk is laid out. Every text a client is shown that may hold a path
    passes here: errors, job errors, /readyz's load errors."""
    if settings is None:
        return message
    folders = {str(Path(settings.artifacts_dir).resolve()): "artifacts"}
    folders |= {str(Path(root).resolve()): "a data root" for root in settings.data_root_paths()}
    folders |= {str(settings.artifacts_dir): "artifacts"} if Path(settings.artifacts_dir).is_absolute() else {}
    for folder in sorted(folders, key=len, reverse=True):  # a root inside another is replaced first
        message = message.replace(folder, folders[folder])
    return message


async def _handle_runtime_error(request: Request, exc: Exception) -> JSONResponse:
    kind = next(RUNTIME_ERRORS[cls] for cls in type(exc).__mro__ if cls in RUNTIME_ERRORS)
    return _respond(request, kind.status_code, kind.error, str(exc))


async def _handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own answer echoes every offending input back; a client needs where and why only
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
    return _respond(request, 422, "invalid_input", f"the request is not valid: {problems[:2000]}")


# Errors that routing and body parsing raise before a route runs, in the one shape too.
_HTTP_ERRORS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                415: "unsupported_media_type"}
_UNPARSABLE_BODY = "There was an error parsing the body"  # FastAPI's words for a body that is not JSON or a form


def _allowed_methods(request: Request) -> str:
    """Every method the OpenAPI lists for this path: starlette's 405 names only the first route's,
    and GET /jobs and POST /jobs are two routes."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        parts = re.split(r"(\{[^/}]+\})", template)  # "/jobs/{job_id}" -> "/jobs/", "{job_id}", ""
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")  # starlette answers HEAD wherever it answers GET
    return ", ".join(sorted(methods))


async def _handle_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    message, headers = str(exc.detail), exc.headers
    if exc.status_code == 400 and message == _UNPARSABLE_BODY:
        message = "the request body cannot be parsed: send UTF-8 JSON, or a multipart form where the route takes files"
    elif exc.status_code == 404 and message == "Not Found":
        message = "no such route; GET /docs lists them"
    elif exc.status_code == 405:
        allowed = _allowed_methods(request) or (headers or {}).get("Allow", "")
        headers = {**(headers or {}), "Allow": allowed}
        message = f"{request.method} is not allowed here; this path takes {allowed}"
    error = _HTTP_ERRORS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "server_error")
    return _respond(request, exc.status_code, error, message, headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServingError, _handle_serving_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _handle_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _handle_validation_error)  # type: ignore[arg-type]
    for error in RUNTIME_ERRORS:
        app.add_exception_handler(error, _handle_runtime_error)
