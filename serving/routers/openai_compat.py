"""The OpenAI-compatible API: `POST /v1/embeddings` and `GET /v1/models`, so the clients people
already use (the stock `openai` package among them) work unchanged with `base_url` pointed here.

`input` is a string or a list of strings. For a CLIP model the strings are texts, embedded by its
text tower, or data URLs of images (`data:image/png;base64,...`), embedded by its image tower, in
one request alike; a text encoder (an imported sentence-transformers model) takes texts only, an
image encoder data URLs only. `encoding_format` "base64" (the stock
client's default) sends each vector as little-endian float32 bytes. `dimensions` keeps the
first n components, re-normalised. `truncate` (not OpenAI's; text-embeddings-inference's name)
embeds a text longer than the model reads by its first tokens instead of answering 422. Errors
come in OpenAI's shape (serving.errors).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from runtime.files import check_name
from runtime.vectors import unit_rows
from serving.dependencies import get_registry
from serving.embedding import embed_images, tokenize
from serving.errors import InvalidInput, PayloadTooLarge, UnknownModel, error_responses
from serving.registry import Registry
from serving.requests import JsonRequest, check_text_chars, decode_base64, json_body_doc, read_json_body
from serving.responses import model_response

router = APIRouter(prefix="/v1", tags=["openai"], responses=error_responses(503, openai=True))
DATA_URL = "data:"
EMBEDDING_KINDS = ("image-encoder", "image-text-encoder", "text-encoder")  # the bundle kinds /v1/embeddings serves


class EmbeddingsRequest(JsonRequest):
    model: str = Field(max_length=256, description="a CLIP model (texts and images), a text encoder (texts) or "
                                                  "an image encoder (images)")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text or data URL, or a list of them. Token ids (OpenAI's other forms) are refused with a 422: "
                    "each model here reads text through its own tokenizer, and ids are another tokenizer's")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32 bytes")
    dimensions: int | None = Field(None, ge=1, description="keep the first n components, re-normalised")
    user: str | None = Field(None, max_length=256, description="accepted and ignored")
    truncate: bool | None = Field(None, description="true: embed a text longer than the model reads by its first tokens "
                                                    "instead of answering 422; the server's auto_truncate when omitted")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


# OpenAI's API also takes token ids (tiktoken's), and LangChain's OpenAIEmbeddings sends them by default.
TOKEN_IDS = ("input holds token ids, which this server cannot read: it tokenises text itself, with each model's own "
             "tokenizer, and ids from another tokenizer name other words. Send the texts as strings (in LangChain: "
             "OpenAIEmbeddings(..., check_embedding_ctx_length=False))")


def _inputs(body: EmbeddingsRequest, registry: Registry) -> list[str]:
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)
    if any(not isinstance(item, str) for item in inputs):
        raise InvalidInput(TOKEN_IDS)
    settings = registry.settings
    limit = max(settings.max_texts_per_request, settings.max_images_per_request)
    if not inputs:
        raise InvalidInput("input is empty: send a string or a list of strings")
    if len(inputs) > limit:
        raise PayloadTooLarge(f"{len(inputs)} inputs in one request; the limit is {limit}: split them")
    texts = [i for i, text in enumerate(inputs) if not text.startswith(DATA_URL)]  # images have their own limits
    check_text_chars([inputs[i] for i in texts], settings, [f"input {i}" for i in texts])
    return inputs


async def _embed(registry: Registry, model: str, inputs: list[str], truncate: bool) -> tuple[np.ndarray, int]:
    """(unit embeddings (n, D), prompt tokens) for texts and data URLs mixed."""
    images = [i for i, text in enumerate(inputs) if text.startswith(DATA_URL)]
    texts = [i for i, text in enumerate(inputs) if not text.startswith(DATA_URL)]
    check_name(model, "model name")  # the one rule for names, though this one is only looked up
    if model not in registry.manifests:
        raise UnknownModel(f"no model named {model!r}; GET /v1/models lists them")
    manifest = registry.manifests[model]
    if manifest.kind not in EMBEDDING_KINDS:
        raise InvalidInput(f"model {model!r} is a {manifest.kind}; /v1/embeddings serves CLIP models, text encoders "
                           "and image encoders")
    if texts and manifest.kind == "image-encoder":
        raise InvalidInput(f"model {model!r} embeds images only: send each input as a data URL (data:image/png;base64,...)")
    if images and manifest.kind == "text-encoder":
        raise InvalidInput(f"model {model!r} embeds texts only, and input {images[0]} is a data URL (an image): "
                           "send texts, or name a model that embeds images")
    if len(images) > registry.settings.max_images_per_request:
        raise PayloadTooLarge(f"{len(images)} images in one request; the limit is {registry.settings.max_images_per_request}")
    vectors = np.zeros((len(inputs), manifest.dim), np.float32)
    tokens = 0
    if images:
        image_manifest, batcher = registry.image_model(model)
        blobs = [decode_base64(inputs[i], i) for i in images]
        vectors[images] = await embed_images(blobs, image_manifest, batcher, registry.images)
    if texts:
        text_model = registry.text_model(model)
        batch = await tokenize([inputs[i] for i in texts], text_model, [f"input {i}" for i in texts], truncate)  # (n, 2, T)
        vectors[texts] = unit_rows(await text_model.batcher.submit(batch))
        tokens = int(batch[:, 1].sum())  # the attention masks: the tokens the tower read
    return vectors, tokens


@router.post("/embeddings", response_model=EmbeddingsResponse, summary="Embeddings, as OpenAI's API answers them",
             openapi_extra=json_body_doc(EmbeddingsRequest), responses=error_responses(404, 415, 429, openai=True))
async def embeddings(request: Request, registry: Annotated[Registry, Depends(get_registry)]) -> Response:
    body = await read_json_body(request, EmbeddingsRequest, '{"model": name, "input": text or [texts or data URLs]}')
    inputs = _inputs(body, registry)
    truncate = registry.settings.auto_truncate if body.truncate is None else body.truncate
    vectors, tokens = await _embed(registry, body.model, inputs, truncate)  # (n, D)
    name = body.model
    if body.dimensions is not None:
        if body.dimensions > vectors.shape[1]:
            raise InvalidInput(f"dimensions {body.dimensions} is more than model {name!r} has ({vectors.shape[1]})")
        vectors = unit_rows(vectors[:, : body.dimensions])
    if body.encoding_format == "base64":
        data = [Embedding(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode()) for i, v in enumerate(vectors)]
    else:
        data = [Embedding(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)]
    return model_response(EmbeddingsResponse(data=data, model=name, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)))


@router.get("/models", summary="The models /v1/embeddings serves")
async def models(registry: Annotated[Registry, Depends(get_registry)]) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": m.name, "object": "model", "created": _created(m.created_at), "owned_by": "embedserve"}
        for m in sorted(list(registry.manifests.values()), key=lambda m: m.name)
        if m.kind in EMBEDDING_KINDS
    ]}


def _created(iso: str) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return 0
