"""Nearest neighbours: `POST /search` by vector, by id, by image or by text, and `POST /search/image`
for an uploaded file. An image (or, for a CLIP model, a text) is embedded with the model version
the index was built with."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from index.vector_index import VectorIndex
from serving.dependencies import get_registry
from serving.errors import InvalidInput, UnknownId, error_responses
from serving.registry import Registry
from serving.responses import model_response
from serving.embedding import embed_images, embed_texts
from serving.requests import (JsonRequest, check_text_chars, check_vector_length, decode_base64, exactly_one_of,
                              unit_vector)

router = APIRouter(tags=["search"], responses=error_responses(404, 415, 429, 503))


class SearchRequest(JsonRequest):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("vector", "id", "image", "text"))

    index: str | None = Field(None, description="index to search; the default when omitted")
    k: int = Field(10, ge=1, description="how many neighbours")
    vector: list[float] | None = Field(None, description="a query embedding of the index's dimension")
    id: int | None = Field(None, ge=-(2**63), lt=2**63, description="the id of an item in the index (int64): its neighbours")
    image: str | None = Field(None, description="a base64-encoded image, embedded with the index's model")
    text: str | None = Field(None, description="a text, embedded with the index's model if it is a CLIP model")
    where: dict[str, str | int | float | bool] | None = Field(
        None, max_length=16, description='only items whose metadata has each of these fields equal to its value, e.g. {"label": "bag"}'
    )

    @model_validator(mode="after")
    def exactly_one_query(self) -> SearchRequest:
        given = [name for name in ("vector", "id", "image", "text") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"send exactly one of vector, id, image or text; got {', '.join(given) or 'none'}")
        return self


class Hit(BaseModel):
    id: int
    score: float
    metadata: dict[str, Any] | None


class SearchResponse(BaseModel):
    index: str
    version: str
    model: str | None
    model_version: str | None
    hits: list[Hit]


def _check_k(registry: Registry, k: int) -> None:
    if k > registry.settings.max_k:
        raise InvalidInput(f"k={k} is more than the server allows ({registry.settings.max_k}); ask for fewer")


def _query_from_id(index: VectorIndex, name: str, id: int) -> np.ndarray:
    try:
        return index.vector(id)  # (D,)
    except KeyError:
        raise UnknownId(f"id {id} is not in index {name!r}; search by vector or image instead") from None


async def _query_from_image(registry: Registry, index: VectorIndex, name: str, data: bytes) -> np.ndarray:
    if index.model is None:
        raise InvalidInput(f"index {name!r} records no model, so an image cannot be embedded for it; search by vector or id")
    manifest, batcher = registry.image_model(index.model, index.model_version)
    return (await embed_images([data], manifest, batcher, registry.images))[0]  # (D,)


async def _query_from_text(registry: Registry, index: VectorIndex, name: str, text: str) -> np.ndarray:
    if index.model is None:
        raise InvalidInput(f"index {name!r} records no model, so a text cannot be embedded for it; search by vector or id")
    manifest = registry.image_manifests.get((index.model, index.model_version))
    if manifest is not None and manifest.kind != "image-text-encoder":
        raise InvalidInput(f"index {name!r} was built with {index.model!r}, a {manifest.kind} with no text tower; "
                           "search it by image, vector or id, or build the index with a CLIP model")
    model = registry.text_model(index.model, index.model_version)
    return (await embed_texts([text], model, ["the query text"], registry.settings.auto_truncate))[0]  # (D,)


async def _search(index: VectorIndex, query: np.ndarray, k: int, where: dict[str, Any] | None = None) -> Response:
    def run() -> list[Hit]:
        try:
            scores, ids = index.search(query[None, :], k, where=where)  # (1, k), (1, k)
        except ValueError as e:  # a filter field name that is not a plain name
            raise InvalidInput(str(e)) from None
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        metadata = index.metadata([i for i, _ in found])
        return [Hit(id=i, score=s, metadata=m) for (i, s), m in zip(found, metadata)]

    manifest = index.manifest
    return model_response(SearchResponse(
        index=manifest.name, version=manifest.version, model=index.model, model_version=index.model_version,
        hits=await run_in_threadpool(run),
    ))


@router.post("/search", response_model=SearchResponse, summary="Nearest neighbours of a vector, an id, an image or a text")
async def search(body: SearchRequest, registry: Annotated[Registry, Depends(get_registry)]) -> Response:
    _check_k(registry, body.k)
    if body.vector is not None:
        check_vector_length(body.vector, registry.settings, "vector")
    if body.text is not None:
        check_text_chars([body.text], registry.settings, ["text"])
    index = await registry.fresh_index(body.index)
    name = index.manifest.name
    if body.vector is not None:
        query = unit_vector(body.vector, index.dim, "vector", name)  # (D,)
    elif body.id is not None:
        query = _query_from_id(index, name, body.id)
    elif body.image is not None:
        query = await _query_from_image(registry, index, name, decode_base64(body.image, 0))
    else:
        query = await _query_from_text(registry, index, name, body.text)
    return await _search(index, query, body.k, body.where)


@router.post("/search/image", response_model=SearchResponse, summary="Nearest neighbours of an uploaded image")
async def search_image(
    file: Annotated[UploadFile, File(description="the query image")],
    registry: Annotated[Registry, Depends(get_registry)],
    index: Annotated[str | None, Form(description="index to search; the default when omitted")] = None,
    k: Annotated[int, Form(ge=1, description="how many neighbours")] = 10,
) -> Response:
    _check_k(registry, k)
    vector_index = await registry.fresh_index(index)
    query = await _query_from_image(registry, vector_index, vector_index.manifest.name, await file.read())
    return await _search(vector_index, query, k)
