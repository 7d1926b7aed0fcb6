"""Text embeddings from a text model: `POST /embed/text`. A text model is a CLIP model's text
tower or a text encoder (a sentence-transformers model that `embedserve import` brought in).

Texts are tokenised with the bundle's tokenizer.json through runtime.tokens, the call training
made, so a text gets the same ids here as in training. A text that the tokenizer would truncate
is refused (422, naming the limit in tokens) rather than silently cut: its embedding would
describe a text the client did not send; unless the client asks for truncation (`truncate`, as
text-embeddings-inference names it) or the server does for every request (auto_truncate).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field

from serving.dependencies import get_registry
from serving.embedding import embed_texts
from serving.errors import InvalidInput, PayloadTooLarge, error_responses
from serving.registry import Registry
from serving.requests import JsonRequest, check_text_chars
from serving.responses import EmbedResponse, model_response

router = APIRouter(tags=["embed"])


class EmbedTextsRequest(JsonRequest):
    texts: list[str] = Field(description="texts to embed, each one within the model's context length in tokens",
                             json_schema_extra={"minItems": 1})
    model: str | None = Field(None, description="text model (CLIP or text encoder); the default when omitted")
    truncate: bool | None = Field(None, description="true: embed a text longer than the model reads by its first tokens "
                                                    "instead of answering 422; the server's auto_truncate when omitted")


@router.post("/embed/text", response_model=EmbedResponse, summary="Embed one or more texts with a text model",
             responses=error_responses(404, 429, 503))
async def embed_text(
    body: EmbedTextsRequest,
    registry: Annotated[Registry, Depends(get_registry)],
    model: Annotated[str | None, Query(description="text model (CLIP or text encoder); wins over the body's")] = None,
) -> Response:
    limit = registry.settings.max_texts_per_request
    if not body.texts:
        raise InvalidInput('no texts: send {"texts": ["...", ...]}')
    if len(body.texts) > limit:
        raise PayloadTooLarge(f"{len(body.texts)} texts in one request; the limit is {limit}: split them over several requests")
    check_text_chars(body.texts, registry.settings, [f"text {i}" for i in range(len(body.texts))])
    text_model = registry.text_model(model or body.model)
    truncate = registry.settings.auto_truncate if body.truncate is None else body.truncate
    embeddings = await embed_texts(body.texts, text_model, truncate=truncate)  # (n, D)
    manifest = text_model.manifest
    return model_response(EmbedResponse(model=manifest.name, version=manifest.version, dim=embeddings.shape[1],
                                        embeddings=embeddings.tolist()))
