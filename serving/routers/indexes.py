"""The indexes being served (`GET /indexes`), changing their items (`POST /indexes/{name}/items`,
`DELETE /indexes/{name}/items/{id}`), an item's image as a thumbnail (`GET
/indexes/{name}/items/{id}/image`), and reloading what changed on disk (`POST /admin/reload`).

An item change is acknowledged only once it is on disk: it is applied to the served index and
written as the index's next version (atomically, made current), so it survives a crash or a
restart and shows in the next search, whichever worker answers it; in Milvus the change is
written to the collection of the current version in place, which keeps its version. Changes to one
index are applied one at a time, across the server's workers too (Registry.write_index); many items
at once are cheaper sent together (or through a job) than one by one.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections import defaultdict
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from index.vector_index import VectorIndex
from runtime.preprocessing import ImageError, normalize_image
from runtime.sources import SourceError, read_item
from serving.dependencies import get_registry
from serving.embedding import embed_images
from serving.errors import InvalidInput, PayloadTooLarge, UnknownId, error_responses
from serving.registry import Registry, index_precision, retire_later
from serving.requests import JsonRequest, check_vector_length, decode_base64, exactly_one_of, unit_vector
from serving.settings import Settings

router = APIRouter(tags=["indexes"], responses=error_responses(503))
MAX_ITEMS_PER_REQUEST = 1000
MAX_THUMBNAIL_PX = 256  # the longest side an item's image is served at
# Thumbnails decoding at once (per process): each may hold an image of up to EMBEDSERVE_MAX_IMAGE_PIXELS,
# so a page of search hits, or many clients, cannot hold more memory than a few decodes take.
_thumbnail_decodes = threading.BoundedSemaphore(2)
_writers: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # one change at a time per index name


class Item(JsonRequest):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("vector", "image"))

    id: int = Field(ge=-(2**63), lt=2**63, description="the item's id (int64), new to the index")
    vector: list[float] | None = Field(None, description="its embedding, of the index's dimension")
    image: str | None = Field(None, description="or a base64 image, embedded with the index's model version")
    metadata: dict[str, Any] = Field(default_factory=dict, description="returned with the item by /search; at most "
                                                                       "EMBEDSERVE_MAX_METADATA_BYTES as JSON")

    @model_validator(mode="after")
    def one_of_vector_or_image(self) -> "Item":
        if (self.vector is None) == (self.image is None):
            raise ValueError("send exactly one of vector or image per item")
        return self


class AddItemsRequest(JsonRequest):
    items: list[Item] = Field(max_length=MAX_ITEMS_PER_REQUEST, json_schema_extra={"minItems": 1}, description=f"at most {MAX_ITEMS_PER_REQUEST} items (images count against the image limit)")


@router.get("/indexes", summary="Each index served: its version, model and model version, count and kind")
async def list_indexes(registry: Annotated[Registry, Depends(get_registry)]) -> dict[str, Any]:
    return {"indexes": [
        {"name": name, "version": index.manifest.version, "model": index.model, "model_version": index.model_version,
         "count": len(index), "dim": index.dim, "kind": index.kind, "created_at": index.manifest.created_at,
         "precision": index_precision(index)}  # what its vectors were embedded at (fp32, fp16, int8), when recorded
        for name, index in sorted((await registry.fresh_indexes()).items())
    ]}


async def _write(registry: Registry, name: str, prepared_on: VectorIndex, change) -> tuple[VectorIndex, str]:
    """Apply `change(index)` to index `name`'s current version and write it as its next version
    (Registry.write_index); returns the index and that version."""
    async with _writers[name]:  # this process's writers queue here rather than each holding a thread
        written = await asyncio.to_thread(registry.write_index, name, prepared_on, change)
    retire_later(registry.unused_batchers())  # a model version only the replaced version used
    return written


def _check_items(items: list[Item], settings: Settings) -> None:
    """Each item's vector and metadata within the server's limits, before anything is embedded or stored:
    metadata is kept on disk and sent with every hit that finds the item."""
    for i, item in enumerate(items):
        if item.vector is not None:
            check_vector_length(item.vector, settings, f"item {i}'s vector")
        size = len(json.dumps(item.metadata, ensure_ascii=False).encode())
        if size > settings.max_metadata_bytes:
            raise PayloadTooLarge(f"item {i}'s metadata is {size:,} bytes as JSON; the limit is {settings.max_metadata_bytes:,} "
                                  "(EMBEDSERVE_MAX_METADATA_BYTES): keep large data elsewhere and store a reference to it")


async def _vectors(registry: Registry, index: VectorIndex, name: str, items: list[Item]) -> np.ndarray:
    """(N, D) for the items: their own vectors, or their images embedded with the index's model version."""
    vectors = np.zeros((len(items), index.dim), np.float32)
    images = [(i, item.image) for i, item in enumerate(items) if item.image is not None]
    for i, item in enumerate(items):
        if item.vector is not None:
            vectors[i] = unit_vector(item.vector, index.dim, f"item {i}'s vector", name)
    if images:
        if len(images) > registry.settings.max_images_per_request:
            raise PayloadTooLarge(f"{len(images)} images in one request; the limit is {registry.settings.max_images_per_request}")
        if index.model is None:
            raise InvalidInput(f"index {name!r} records no model, so images cannot be embedded for it; send vectors")
        manifest, batcher = registry.image_model(index.model, index.model_version)
        blobs = [decode_base64(text, i) for i, text in images]
        vectors[[i for i, _ in images]] = await embed_images(blobs, manifest, batcher, registry.images)
    return vectors


@router.post("/indexes/{name}/items", summary="Add items to an index (acknowledged once on disk)",
             responses=error_responses(404, 409, 415, 429))
async def add_items(name: str, body: AddItemsRequest, registry: Annotated[Registry, Depends(get_registry)]) -> dict[str, Any]:
    if not body.items:
        raise InvalidInput('no items: send {"items": [{"id": 1, "vector": [...], "metadata": {...}}]}')
    if len(body.items) > MAX_ITEMS_PER_REQUEST:
        raise PayloadTooLarge(f"{len(body.items)} items in one request; the limit is {MAX_ITEMS_PER_REQUEST}: split them")
    _check_items(body.items, registry.settings)
    index = await registry.fresh_index(name)
    ids = np.array([item.id for item in body.items], np.int64)
    taken = [int(i) for i in ids if int(i) in index]
    if taken or len(set(ids.tolist())) != len(ids):
        raise InvalidInput(f"ids must be new to index {name!r} and distinct; taken or repeated: {taken[:10] or 'repeated'}")
    vectors = await _vectors(registry, index, name, body.items)

    def add(index: VectorIndex) -> None:
        try:
            index.add(ids, vectors, [item.metadata for item in body.items])
        except ValueError as e:  # an id another request took meanwhile
            raise InvalidInput(str(e)) from None

    index, version = await _write(registry, name, index, add)
    return {"index": name, "version": version, "added": len(ids), "count": len(index)}


@router.delete("/indexes/{name}/items/{item_id}", summary="Remove an item from an index (acknowledged once on disk)",
               responses=error_responses(404, 409))
async def remove_item(
    name: str,
    item_id: Annotated[int, Path(ge=-(2**63), lt=2**63, description="the item's id (int64)")],
    registry: Annotated[Registry, Depends(get_registry)],
) -> dict[str, Any]:
    index = await registry.fresh_index(name)
    if item_id not in index:
        raise UnknownId(f"id {item_id} is not in index {name!r}")

    def remove(index: VectorIndex) -> None:
        if item_id not in index:  # another request removed it meanwhile
            raise UnknownId(f"id {item_id} is not in index {name!r}")
        index.remove([item_id])

    index, version = await _write(registry, name, index, remove)
    return {"index": name, "version": version, "removed": 1, "count": len(index)}


def _thumbnail(index: VectorIndex, name: str, item_id: int, size: int, registry: Registry) -> bytes:
    """The PNG of item `item_id`'s image, read again from the source its metadata records (under the
    server's data roots and image limits, as a job reads it), shrunk to fit `size` × `size`."""
    record = index.metadata([item_id])[0] or {}
    # indexes built before items recorded their source: the index's own source stands in, as for jobs
    fallback = index.manifest.extra.get("source") if index.manifest else None
    if not (record.get("source") or fallback) or not ("path" in record or "position" in record):
        raise InvalidInput(f"item {item_id} of index {name!r} records no image source (it was added as a vector or an "
                           "upload, not read from a data set, folder or manifest), so there is no image to show")
    settings = registry.settings
    with _thumbnail_decodes:
        try:
            image = read_item(record, settings.image_limits(), settings.data_root_paths(), default_source=fallback,
                              resize=size)  # decoded at about the thumbnail's size, not the file's
        except (SourceError, ImageError):
            raise  # mapped in serving/errors.py: outside the data roots 403; a bad file 413, 415 or 422
        except (OSError, LookupError, TypeError, ValueError) as e:  # gone from disk, or a record that is not one
            raise InvalidInput(f"the image of item {item_id} of index {name!r} cannot be read again from what its "
                               f"metadata records (source {str(record.get('source') or fallback)[:200]!r}): "
                               f"{type(e).__name__}") from None
        image = normalize_image(image, "L" if image.mode in ("1", "L") else "RGB")
        image.thumbnail((size, size))  # never enlarged: a 28-pixel image stays 28 pixels, the page scales it
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@router.get("/indexes/{name}/items/{item_id}/image", response_class=Response,
            summary="An item's image as a PNG thumbnail, for an index whose items were read from images",
            responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the image, its longest side at most `size` pixels"},
                       **error_responses(404, 415)})
async def item_image(
    name: str,
    item_id: Annotated[int, Path(ge=-(2**63), lt=2**63, description="the item's id (int64)")],
    registry: Annotated[Registry, Depends(get_registry)],
    size: Annotated[int, Query(ge=8, le=MAX_THUMBNAIL_PX, description="the longest side, in pixels")] = 128,
) -> Response:
    index = await registry.fresh_index(name)
    if item_id not in index:
        raise UnknownId(f"id {item_id} is not in index {name!r}")
    png = await run_in_threadpool(_thumbnail, index, name, item_id, size, registry)
    # private: with keys on, only the caller may keep it; an id removed and added again shows anew after this
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


@router.post("/admin/reload", summary="Serve the model and index versions whose `current` pointers changed")
async def reload(registry: Annotated[Registry, Depends(get_registry)]) -> dict[str, Any]:
    changed, unused = await asyncio.to_thread(registry.reload)
    registry.announce_reload()  # the other workers on this artifacts folder follow within a second
    retire_later(unused)  # their sessions close once the requests that hold them are done
    return {"changed": changed, "retired": [f"{b.encoder.name} {b.encoder.manifest.version}" for b in unused]}
