"""JSON responses written straight from a pydantic model.

Handed a model by a route with a response model, FastAPI dumps it to Python objects, validates
those against the response model once more and serialises the result. For a response that
carries embeddings (hundreds of floats) that second pass costs the event loop about 0.25 ms per
request on this project's 2-core machine — more than a small image model takes to run — and the
event loop is what limits a CPU server. Routes that return `model_response(...)` keep their
`response_model` for the OpenAPI schema; the model was validated when it was built.
"""

from __future__ import annotations

from typing import Literal

from fastapi import Response
from pydantic import BaseModel, Field


def model_response(model: BaseModel) -> Response:
    """`model` as an application/json response, serialised once by pydantic."""
    return Response(model.model_dump_json(), media_type="application/json")


class EmbedResponse(BaseModel):
    """What /embed/image and /embed/text answer."""

    model: str
    version: str
    dim: int
    embeddings: list[list[float]] = Field(description="one L2-normalised row per input, in request order")


class ModelState(BaseModel):
    """One configured model as /readyz lists it: loaded (with what it is) or failed (with why)."""

    name: str
    state: Literal["loaded", "failed"]
    version: str | None = None
    kind: str | None = None
    method: str | None = None
    dim: int | None = None
    precision: dict[str, str] | None = Field(None, description="loaded encoders: the variant each runs (fp32, fp16, int8), by role")
    runs_on: dict[str, str] | None = Field(None, description="loaded encoders: the onnxruntime execution provider each session "
                                           "really runs on (CPUExecutionProvider where CUDA was listed but did not start), "
                                           "or triton, by role")
    error: str | None = Field(None, description="why a failed model was refused")


class IndexState(BaseModel):
    name: str
    version: str
    model: str | None
    model_version: str | None


class ReadyCounts(BaseModel):
    models_loaded: int
    models_failed: int
    indexes: int


class ReadyResponse(BaseModel):
    """What /readyz answers, 200 when ready and 503 when not. Without a key (on a server with keys)
    only the status and counts: names, versions and load errors are for the server's users."""

    status: Literal["ready", "not ready"]
    counts: ReadyCounts
    models: list[ModelState] | None = Field(None, description="each model, with an API key (or on a server without keys)")
    indexes: list[IndexState] | None = Field(None, description="each index, with an API key (or on a server without keys)")
