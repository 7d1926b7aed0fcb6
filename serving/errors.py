"""Errors are types: one exception per kind of bad input, mapped to an HTTP status in one place.

Every message says what to fix. The handlers turn them into `{"detail": message, "error": type}`
so clients can branch on `error` and show `detail`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ServingError(Exception):
    """Base for errors a client caused; `status_code` and `error` are what it answers."""

    status_code = 400
    error = "bad_request"

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


class InvalidInput(ServingError):
    status_code = 422
    error = "invalid_input"


class PayloadTooLarge(ServingError):
    status_code = 413
    error = "payload_too_large"


class UnsupportedMediaType(ServingError):
    status_code = 415
    error = "unsupported_media_type"


class NotReady(ServingError):
    status_code = 503
    error = "not_ready"


async def _handle_serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.message, "error": exc.error})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServingError, _handle_serving_error)  # type: ignore[arg-type]
