"""Image embeddings: `POST /embed/image`, the images sent as multipart files or as base64 in JSON.

Too many images in one request answer 413 (the request is too large, not malformed). Small
images are decoded on the event loop, larger ones in a thread; the model call goes through the
model's micro-batcher (serving.embedding).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field

from serving.dependencies import get_registry
from serving.errors import error_responses
from serving.embedding import embed_images
from serving.registry import Registry
from serving.requests import (FILES_FIELD, FILES_SCHEMA, JsonRequest, check_image_count, content_type,
                              decode_base64_images, form_text, read_form_images, read_json_body, request_body_doc)
from serving.responses import EmbedResponse, model_response
from serving.settings import Settings

router = APIRouter(tags=["embed"])


class EmbedImagesRequest(JsonRequest):
    images: list[str] = Field(description="image files, each base64-encoded (a data: URL prefix is allowed)",
                              json_schema_extra={"minItems": 1})
    model: str | None = Field(None, description="image encoder; the default when omitted")


async def read_images(request: Request, settings: Settings) -> tuple[list[bytes], str | None]:
    """The encoded images of a multipart or JSON request, in order, and the model it names."""
    if content_type(request) == "multipart/form-data":
        async with request.form() as form:  # closes the spooled upload files on the way out
            return await read_form_images(form, settings), form_text(form, "model")
    if not await request.body():
        check_image_count(0, settings)
    parsed = await read_json_body(request, EmbedImagesRequest, '{"images": [base64, ...], "model": optional name}')
    return decode_base64_images(parsed.images, settings), parsed.model


@router.post(
    "/embed/image",
    response_model=EmbedResponse,
    summary="Embed one or more images",
    openapi_extra=request_body_doc({FILES_FIELD: FILES_SCHEMA}, [FILES_FIELD], EmbedImagesRequest),
    responses=error_responses(404, 415, 429, 503),
)
async def embed_image(
    request: Request,
    registry: Annotated[Registry, Depends(get_registry)],
    model: Annotated[str | None, Query(description="image encoder; the default when omitted")] = None,
) -> Response:
    settings = registry.settings
    blobs, body_model = await read_images(request, settings)
    image_model = registry.image_model(model or body_model)
    manifest = image_model.manifest
    embeddings = await embed_images(blobs, manifest, image_model.batcher, registry.images)  # (n, D)
    return model_response(EmbedResponse(model=manifest.name, version=manifest.version, dim=embeddings.shape[1],
                                        embeddings=embeddings.tolist()))
