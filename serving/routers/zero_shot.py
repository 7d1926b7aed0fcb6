"""Zero-shot classification: `POST /zero-shot` ranks classes named in words for each image.

Each class becomes one prompt per template ("a photo of a {}." → "a photo of a sneaker."); the
class's text embedding is the normalised mean of its prompts' (index.class_matrix),
and an image's probabilities are the softmax of logit_scale × cosine against those rows, as CLIP
evaluates. With `normalization` "querybank" (the default when the model has a query bank), each
class's cosine first loses its query-bank offset, so classes that training pulled onto many
images stop out-scoring the ones it never named (index.class_matrix). Class matrices and offsets
are cached per (model, version, classes, templates): a repeated class list costs only the image
pass. Images arrive as multipart `files` with a form field `classes` (a JSON list, or the field
repeated), or as JSON {"images": [base64], "classes": [...]}. The checks of classes, templates
and normalization and the cached class matrices are serving.class_prompts's, which /explain shares.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from index.class_matrix import NORMALIZATIONS, class_probabilities, class_scores
from serving.dependencies import get_registry
from serving.embedding import embed_images
from serving.errors import error_responses
from serving.registry import Registry
from serving.requests import (FILES_FIELD, FILES_SCHEMA, JsonRequest, content_type, decode_base64_images, form_list,
                              form_text, read_form_images, read_json_body, request_body_doc)
from serving.responses import model_response
from serving.settings import Settings
from serving.class_prompts import (check_classes, check_normalization, check_prompts, check_templates, class_matrix,
                               logit_scale)

router = APIRouter(tags=["zero-shot"])

class ZeroShotRequest(JsonRequest):
    images: list[str] = Field(description="image files, each base64-encoded (a data: URL prefix is allowed)",
                              json_schema_extra={"minItems": 1})
    classes: list[str] = Field(description="two or more class names, e.g. [\"a sneaker\", \"a bag\"]",
                               json_schema_extra={"minItems": 2})
    templates: list[str] | None = Field(None, description="prompt templates, each with one '{}' for the class; "
                                                          "runtime.templates.EVAL_TEMPLATES when omitted",
                                     json_schema_extra={"minItems": 1})
    model: str | None = Field(None, description="CLIP model; the default when omitted")
    normalization: str | None = Field(None, description="\"querybank\": subtract each class's query-bank offset "
                                                        "from its cosine; \"none\": plain cosines; the server's "
                                                        "default (EMBEDSERVE_ZERO_SHOT_NORMALIZATION) when omitted",
                                        json_schema_extra={"enum": [*NORMALIZATIONS, None]})


class Label(BaseModel):
    label: str = Field(description="a class name as the request sent it (whitespace stripped)")
    probability: float = Field(description="softmax over the request's classes of logit_scale × (cosine − the "
                                           "class's query-bank offset, with normalization querybank)")
    score: float = Field(description="what the classes are ranked by: the cosine, less the class's query-bank offset "
                                     "with normalization querybank; probability is the softmax of logit_scale × score")
    cosine: float = Field(description="the plain cosine between the image and the class's text embedding")


class ZeroShotResult(BaseModel):
    labels: list[Label] = Field(description="every class, most probable first")


class ZeroShotResponse(BaseModel):
    model: str
    version: str
    templates: list[str] = Field(description="the templates the class embeddings were built from")
    normalization: str = Field(description="the normalization applied: querybank or none")
    results: list[ZeroShotResult] = Field(description="one per image, in request order")


async def read_request(request: Request, settings: Settings) -> tuple[list[bytes], ZeroShotRequest]:
    """The encoded images (in order) and the rest of a multipart or JSON zero-shot request."""
    if content_type(request) == "multipart/form-data":
        max_fields = settings.max_classes + settings.max_templates + 8  # starlette's own cap is 1000 fields
        async with request.form(max_fields=max_fields) as form:  # closes the spooled upload files on the way out
            blobs = await read_form_images(form, settings)
            templates = form.getlist("templates")
            fields = ZeroShotRequest(
                images=[], classes=form_list(form.getlist("classes"), "classes"),
                templates=form_list(templates, "templates") if templates else None,
                model=form_text(form, "model"), normalization=form_text(form, "normalization"),
            )
            return blobs, fields
    parsed = await read_json_body(request, ZeroShotRequest, '{"images": [base64, ...], "classes": [name, ...], '
                                  '"templates": optional [template, ...], "model": optional name, '
                                  '"normalization": optional "querybank" or "none"}')
    return decode_base64_images(parsed.images, settings), parsed


_REQUEST_BODY_DOC = request_body_doc(
    {
        FILES_FIELD: FILES_SCHEMA,
        "classes": {"type": "array", "items": {"type": "string"}, "minItems": 2,
                    "description": "repeat the field, or send one JSON list"},
        "templates": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "model": {"type": "string"},
        "normalization": {"type": "string", "enum": list(NORMALIZATIONS)},
    },
    [FILES_FIELD, "classes"],
    ZeroShotRequest,
)


@router.post(
    "/zero-shot",
    response_model=ZeroShotResponse,
    summary="Rank classes named in words for each image",
    openapi_extra=_REQUEST_BODY_DOC,
    responses=error_responses(404, 415, 429, 503),
)
async def zero_shot(
    request: Request,
    registry: Annotated[Registry, Depends(get_registry)],
    model_query: Annotated[str | None, Query(alias="model", description="CLIP model; wins over the body's")] = None,
) -> Response:
    settings = registry.settings
    blobs, body = await read_request(request, settings)
    classes = check_classes(body.classes, settings)
    templates = check_templates(body.templates, settings)
    check_prompts(classes, templates, settings)
    model = registry.text_model(model_query or body.model)
    normalization = check_normalization(body.normalization, model, settings)
    image_model = registry.image_model(model.manifest.name, model.manifest.version)  # the same bundle's image side
    manifest = image_model.manifest

    matrix, offsets = await class_matrix(registry, model, classes, templates, normalization)  # (C, D), (C,)
    images = await embed_images(blobs, manifest, image_model.batcher, registry.images)  # (B, D), unit rows
    cosines, scores = class_scores(images, matrix, offsets)  # (B, C), (B, C): scores are what the softmax ranks
    probabilities = class_probabilities(scores, logit_scale(manifest))  # (B, C)
    results = []
    for row_cosines, row_scores, row_probabilities in zip(cosines, scores, probabilities):
        order = np.argsort(-row_probabilities, kind="stable")  # (C,) most probable first, highest score first
        results.append(ZeroShotResult(labels=[
            Label(label=classes[c], probability=float(row_probabilities[c]), score=float(row_scores[c]),
                  cosine=float(row_cosines[c])) for c in order
        ]))
    return model_response(ZeroShotResponse(model=manifest.name, version=manifest.version, templates=templates,
                                           normalization=normalization, results=results))
