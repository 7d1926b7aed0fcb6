"""Image embeddings: `POST /embed/image`, the images sent as multipart files or as base64 in JSON.

Too many images in one request answer 413 (the request is too large, not malformed). Decoding
and preprocessing run in the threadpool; the model call goes through the model's micro-batcher.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import FormData, UploadFile

from export.bundle import Manifest
from index.analogy import unit_rows
from serving.batching import MicroBatcher
from serving.dependencies import get_registry
from serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from serving.preprocessing import load_pixels, open_image, preprocess_batch
from serving.registry import Registry
from serving.responses import model_response
from serving.settings import Settings

router = APIRouter(tags=["embed"])

FILES_FIELD = "files"  # the multipart field that carries the images
# A request whose images hold at most this many pixels in all is decoded on the event loop: a
# 28×28 PNG decodes and preprocesses in about 50 µs, less than the hop to a worker thread costs
# the loop; anything larger goes to a thread so that the loop never stalls on a big decode.
INLINE_DECODE_MAX_PIXELS = 64 * 64 * 16
JsonBody = TypeVar("JsonBody", bound=BaseModel)


class EmbedImagesRequest(BaseModel):
    images: list[str] = Field(description="image files, each base64-encoded (a data: URL prefix is allowed)")
    model: str | None = Field(None, description="image encoder; the default when omitted")


class EmbedResponse(BaseModel):
    model: str
    version: str
    dim: int
    embeddings: list[list[float]] = Field(description="one L2-normalised row per image, in request order")


def decode_base64(text: str, position: int) -> bytes:
    """The bytes of one base64 image; `position` (0-based) names it in the error."""
    if text.startswith("data:"):  # a data URL: data:image/png;base64,<payload>
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"image {position} is not valid base64 ({e}); send the file's bytes base64-encoded") from e


def check_image_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise InvalidInput(f"no images: send one or more as multipart files in field {FILES_FIELD!r} or as JSON {{\"images\": [base64, ...]}}")
    if count > settings.max_images_per_request:
        raise PayloadTooLarge(
            f"{count} images in one request; the limit is {settings.max_images_per_request}: split them over several requests"
        )


def content_type(request: Request) -> str:
    """The request's media type, lower-cased, without parameters ("multipart/form-data")."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form_images(form: FormData, settings: Settings) -> list[bytes]:
    """The bytes of the image files in a multipart form's `files` field, in order."""
    parts = form.getlist(FILES_FIELD)
    check_image_count(len(parts), settings)
    if any(not isinstance(p, UploadFile) for p in parts):
        raise InvalidInput(f"multipart field {FILES_FIELD!r} must hold files, not text; attach each image as a file")
    return [await p.read() for p in parts]


def form_text(form: FormData, field: str) -> str | None:
    """An optional text field of a multipart form; None when absent, empty or a file."""
    value = form.get(field)
    return value if isinstance(value, str) and value else None


def parse_json_body(model: type[JsonBody], body: bytes, shape: str) -> JsonBody:
    """`body` validated as `model`, or InvalidInput showing the expected `shape` and each problem."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise InvalidInput(f"the JSON body must be {shape}: {problems}") from None


def decode_base64_images(texts: list[str], settings: Settings) -> list[bytes]:
    check_image_count(len(texts), settings)
    return [decode_base64(text, i) for i, text in enumerate(texts)]


def prepare_images(images: list[Image.Image], spec: dict[str, Any], settings: Settings) -> np.ndarray:
    """Decode the pixels of opened images and preprocess them → the model's batch (n, C, H, W)."""
    return preprocess_batch([load_pixels(img, settings.max_image_pixels) for img in images], spec)  # (n, C, H, W)


async def embed_images(blobs: list[bytes], manifest: Manifest, batcher: MicroBatcher, settings: Settings) -> np.ndarray:
    """Encoded images → L2-normalised embeddings (n, D), the same path for /embed/image and /search."""
    if not manifest.preprocessing:
        raise InvalidInput(f"model {manifest.name} has no preprocessing spec in its bundle; it cannot embed images")
    images = [open_image(blob, settings.max_image_bytes, settings.max_image_pixels) for blob in blobs]  # headers only
    if sum(img.width * img.height for img in images) <= INLINE_DECODE_MAX_PIXELS:
        batch = prepare_images(images, manifest.preprocessing, settings)  # (n, C, H, W)
    else:
        # asyncio.to_thread rather than starlette's run_in_threadpool: the same kind of pool,
        # without anyio's limiter and cancel scope, which cost the loop more time
        batch = await asyncio.to_thread(prepare_images, images, manifest.preprocessing, settings)
    return unit_rows(await batcher.submit(batch))  # (n, D)


async def read_images(request: Request, settings: Settings) -> tuple[list[bytes], str | None]:
    """The encoded images of a multipart or JSON request, in order, and the model it names."""
    media_type = content_type(request)
    if media_type == "multipart/form-data":
        async with request.form() as form:  # closes the spooled upload files on the way out
            return await read_form_images(form, settings), form_text(form, "model")
    body = await request.body()
    if not body:
        check_image_count(0, settings)
    if media_type not in ("application/json", ""):
        raise UnsupportedMediaType(f"content type {media_type!r} is not accepted; send multipart/form-data or application/json")
    parsed = parse_json_body(EmbedImagesRequest, body, '{"images": [base64, ...], "model": optional name}')
    return decode_base64_images(parsed.images, settings), parsed.model


FILES_SCHEMA = {"type": "array", "items": {"type": "string", "format": "binary"}}  # the `files` field, for the docs


def request_body_doc(form_properties: dict[str, Any], form_required: list[str], json_model: type[BaseModel]) -> dict:
    """`openapi_extra` for a route that reads its body itself, so FastAPI cannot describe it: a
    multipart form with `form_properties`, or JSON shaped as `json_model`."""
    form = {"type": "object", "properties": form_properties, "required": form_required}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": json_model.model_json_schema()},
    }}}


_REQUEST_BODY_DOC = request_body_doc({FILES_FIELD: FILES_SCHEMA}, [FILES_FIELD], EmbedImagesRequest)


@router.post(
    "/embed/image",
    response_model=EmbedResponse,
    summary="Embed one or more images",
    openapi_extra=_REQUEST_BODY_DOC,
    responses={413: {"description": "too many images, or an image too large"}, 415: {"description": "not an image"}},
)
async def embed_image(
    request: Request,
    registry: Annotated[Registry, Depends(get_registry)],
    model: Annotated[str | None, Query(description="image encoder; the default when omitted")] = None,
) -> Response:
    blobs, body_model = await read_images(request, registry.settings)
    manifest, batcher = registry.image_model(model or body_model)
    embeddings = await embed_images(blobs, manifest, batcher, registry.settings)  # (n, D)
    return model_response(EmbedResponse(model=manifest.name, version=manifest.version, dim=embeddings.shape[1],
                                        embeddings=embeddings.tolist()))
