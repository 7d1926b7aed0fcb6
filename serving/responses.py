"""JSON responses written straight from a pydantic model.

Handed a model by a route with a response model, FastAPI dumps it to Python objects, validates
those against the response model once more and serialises the result. For a response that
carries embeddings (hundreds of floats) that second pass costs the event loop about 0.25 ms per
request on this project's 2-core machine — more than a small image model takes to run — and the
event loop is what limits a CPU server. Routes that return `model_response(...)` keep their
`response_model` for the OpenAPI schema; the model was validated when it was built.
"""

from __future__ import annotations

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
