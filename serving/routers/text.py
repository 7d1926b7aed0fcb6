"""Text embeddings from a CLIP model's text tower: `POST /embed/text`, and `embed_texts`, the one
path from strings to unit vectors that /zero-shot and text search share.

Texts are tokenised with the bundle's tokenizer.json through index.text_tokens.encode_batch, the
call training made, so a text gets the same ids here as in training. A text that the tokenizer
would truncate is refused (422, naming the limit in tokens) rather than silently cut: its
embedding would describe a text the client did not send.
"""

from __future__ import annotations

from typing import Annotated, Sequence

import numpy as np
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from index.analogy import unit_rows
from index.text_tokens import encode_batch
from serving.dependencies import get_registry
from serving.errors import InvalidInput, PayloadTooLarge
from serving.registry import Registry, TextModel
from serving.responses import model_response
from serving.routers.embed import EmbedResponse

router = APIRouter(tags=["embed"])


class EmbedTextsRequest(BaseModel):
    texts: list[str] = Field(description="texts to embed, each one within the model's context length in tokens")
    model: str | None = Field(None, description="CLIP model; the default when omitted")


def describe(position: int, text: str) -> str:
    """How errors name a text: its position and the start of it."""
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"text {position} ({shown!r})"


def tokenize(model: TextModel, texts: Sequence[str], names: Sequence[str] | None = None) -> np.ndarray:
    """Texts → the text encoder's batch (n, 2, T) int64 (token ids and attention mask stacked).
    Raises InvalidInput for an empty text or one longer than the context; `names[i]` says how the
    error names text i (default: its position). CPU-bound: run in a thread."""
    names = names or [describe(i, t) for i, t in enumerate(texts)]
    for name, text in zip(names, texts):
        if not text.strip():
            raise InvalidInput(f"{name} is empty; send words to embed")
    # (n, T) int64 each: exactly what training fed the tower; truncated (n,): texts cut to fit the context
    ids, mask, truncated = encode_batch(model.tokenizer, texts, with_truncation=True)
    if truncated.any():
        name = names[int(np.flatnonzero(truncated)[0])]
        raise InvalidInput(f"{name} is longer than the {model.context_length} tokens model {model.manifest.name} "
                           "reads (special tokens included); shorten it")
    return np.stack([ids, mask], axis=1)  # (n, 2, T)


async def embed_texts(texts: Sequence[str], model: TextModel, names: Sequence[str] | None = None) -> np.ndarray:
    """Texts → L2-normalised embeddings (n, D), through the model's text micro-batcher."""
    tokens = await run_in_threadpool(tokenize, model, texts, names)  # (n, 2, T)
    return unit_rows(await model.batcher.submit(tokens))  # (n, D)


@router.post("/embed/text", response_model=EmbedResponse, summary="Embed one or more texts with a CLIP text tower",
             responses={413: {"description": "too many texts"}})
async def embed_text(body: EmbedTextsRequest, registry: Annotated[Registry, Depends(get_registry)]) -> Response:
    limit = registry.settings.max_texts_per_request
    if not body.texts:
        raise InvalidInput('no texts: send {"texts": ["...", ...]}')
    if len(body.texts) > limit:
        raise PayloadTooLarge(f"{len(body.texts)} texts in one request; the limit is {limit}: split them over several requests")
    model = registry.text_model(body.model)
    embeddings = await embed_texts(body.texts, model)  # (n, D)
    manifest = model.manifest
    return model_response(EmbedResponse(model=manifest.name, version=manifest.version, dim=embeddings.shape[1],
                                        embeddings=embeddings.tolist()))
