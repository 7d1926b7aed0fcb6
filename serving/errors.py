"""Errors are types: one exception per kind of bad input, mapped to an HTTP status in one place.

Every message says what to fix. The handlers turn them into `{"detail": message, "error": type}`
so clients can branch on `error` and show `detail`. The inference core raises its own errors
(runtime/ knows nothing of HTTP); `RUNTIME_ERRORS` gives each its status here.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from runtime.bundle import BundleError
from runtime.encoders.base import EncoderUnavailable
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


class NotReady(ServingError):
    status_code = 503
    error = "not_ready"


# The inference core's errors, each answered as the serving error of the same meaning.
RUNTIME_ERRORS: dict[type[Exception], type[ServingError]] = {
    InvalidImage: InvalidInput,
    ImageTooLarge: PayloadTooLarge,
    UnsupportedImage: UnsupportedMediaType,
    InvalidText: InvalidInput,
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


def _respond(request: Request, status_code: int, error: str, message: str,
             headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status_code, content=error_body(request.url.path, status_code, error, message),
                        headers=headers)


async def _handle_serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return _respond(request, exc.status_code, exc.error, exc.message, exc.headers or None)


async def _handle_runtime_error(request: Request, exc: Exception) -> JSONResponse:
    kind = next(RUNTIME_ERRORS[cls] for cls in type(exc).__mro__ if cls in RUNTIME_ERRORS)
    return _respond(request, kind.status_code, kind.error, str(exc))


async def _handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own answer echoes every offending input back; a client needs where and why only
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
    return _respond(request, 422, "invalid_input", f"the request is not valid: {problems[:2000]}")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServingError, _handle_serving_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _handle_validation_error)  # type: ignore[arg-type]
    for error in RUNTIME_ERRORS:
        app.add_exception_handler(error, _handle_runtime_error)
