"""Explanations: `POST /explain` maps where in an image the evidence for one answer lies, by
occlusion (runtime.occlusion): each patch of a grid is masked in turn, the copies run through
the served image model, and the map holds how far the score drops for each.

The score is one of what the server answers elsewhere: a class's zero-shot probability among
competing classes, as /zero-shot computes it (or, with no competitors, the cosine between the
image and the class's text embedding), or the cosine between the image and one item of an index,
as /search scores it. The cost is bounded: at most grid² + 1 rows of the image model
(EMBEDSERVE_MAX_EXPLAIN_GRID), sent through its micro-batcher a batch at a time, so other
requests run between the batches and the masked copies in memory are one batch's.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from index.class_matrix import classify
from runtime.occlusion import drop_map, grid_shape, input_view, occlusion_batch, occlusion_count, overlay_png
from runtime.vectors import unit_rows
from serving.batching import MicroBatcher
from serving.dependencies import get_registry
from serving.embedding import model_input
from serving.errors import InvalidInput, PayloadTooLarge, UnknownId, error_responses
from serving.registry import ImageModel, Registry, TextModel, index_model
from serving.requests import JsonRequest, check_text_chars, decode_base64
from serving.responses import model_response
from serving.settings import Settings
from serving.class_prompts import (check_classes, check_normalization, check_prompts, check_templates, class_matrix,
                               logit_scale)

router = APIRouter(tags=["explain"])

DEFAULT_GRID = 8  # patches per side when a request names no grid
ZERO_SHOT_FIELDS = ("classes", "templates", "normalization", "model")  # what only a label target takes

Scores = Callable[[np.ndarray], np.ndarray]  # a model's raw embeddings (n, D) -> the score of each (n,)


class ExplainRequest(JsonRequest):
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["label"], "properties": {"label": {"not": {"type": "null"}}}},
        {"required": ["index", "id"], "properties": {"index": {"not": {"type": "null"}}, "id": {"not": {"type": "null"}}}},
    ]})

    image: str = Field(description="the image, base64-encoded (a data: URL prefix is allowed)")
    label: str | None = Field(None, description="zero-shot: the class to explain, e.g. \"a sneaker\"")
    classes: list[str] | None = Field(
        None, description="zero-shot: the classes label competes with, label among them; the score is then label's "
                          "probability among them, as /zero-shot computes it. Omitted: the score is the cosine "
                          "between the image and label's text embedding", json_schema_extra={"minItems": 2})
    templates: list[str] | None = Field(None, description="zero-shot: prompt templates, each with one '{}' for the "
                                                          "class, as /zero-shot takes them; its defaults when omitted",
                                        json_schema_extra={"minItems": 1})
    normalization: str | None = Field(None, description="zero-shot with classes: \"querybank\" or \"none\", as "
                                                        "/zero-shot takes it; the server's default when omitted",
                                      json_schema_extra={"enum": ["querybank", "none", None]})
    model: str | None = Field(None, description="zero-shot: the CLIP model; the default when omitted")
    index: str | None = Field(None, description="neighbour: the index holding the item (with id)")
    id: int | None = Field(None, ge=-(2**63), lt=2**63,
                           description="neighbour: the item's id (int64); the score is the cosine between the image, "
                                       "embedded with the index's model version, and the item's stored vector")
    grid: int = Field(DEFAULT_GRID, ge=1, description="patches per side (at most EMBEDSERVE_MAX_EXPLAIN_GRID): a "
                                                      "grid × grid map costs grid² + 1 image-model rows; an input "
                                                      "side of fewer pixels gets one patch per pixel")
    overlay: bool = Field(False, description="also answer the map drawn over the model's view of the image, as a PNG")

    @model_validator(mode="after")
    def exactly_one_target(self) -> ExplainRequest:
        neighbour = [name for name in ("index", "id") if getattr(self, name) is not None]
        if self.label is not None and neighbour:
            raise ValueError("send label (a zero-shot class) or index and id (a neighbour), not both")
        if self.label is None and not neighbour:
            raise ValueError("say what to explain: label (a zero-shot class) or index and id (a neighbour)")
        if neighbour and len(neighbour) < 2:
            raise ValueError(f"a neighbour is named by index and id together; {neighbour[0]} came alone")
        extra = [name for name in ZERO_SHOT_FIELDS if getattr(self, name) is not None]
        if neighbour and extra:
            raise ValueError(f"{', '.join(extra)} go with a label; a neighbour's image is embedded with its index's model")
        return self


class ExplainTarget(BaseModel):
    kind: Literal["zero-shot", "neighbour"] = Field(description="zero-shot: a class; neighbour: an index item")
    label: str | None = Field(None, description="zero-shot: the class explained, as the request named it (stripped)")
    classes: list[str] | None = Field(None, description="zero-shot: the classes it competed with; null: none, the score is a cosine")
    templates: list[str] | None = Field(None, description="zero-shot: the templates its text embedding was built from")
    normalization: str | None = Field(None, description="zero-shot with classes: the normalization applied")
    index: str | None = Field(None, description="neighbour: the index")
    index_version: str | None = Field(None, description="neighbour: the index version the item was read from")
    id: int | None = Field(None, description="neighbour: the item")


class ExplainResponse(BaseModel):
    model: str = Field(description="the image model the copies ran through")
    version: str
    target: ExplainTarget = Field(description="what was explained")
    score: float = Field(description="the score of the unmasked image: label's probability among classes, else a cosine")
    grid: list[list[float]] = Field(description="rows × cols drops, top row first: the unmasked score less the score "
                                                "with that patch masked (filled with the training mean); positive "
                                                "where the patch is evidence for the score, negative where against")
    rows: int = Field(description="patches down the model's input")
    cols: int = Field(description="patches across the model's input")
    overlay: str | None = Field(None, description="with overlay: a base64 PNG of the model's input view of the image "
                                                  "(resized and cropped as preprocessed), red where the patch is "
                                                  "evidence, blue where against, opacity by |drop|; else null")


def check_grid(grid: int, settings: Settings) -> None:
    if grid > settings.max_explain_grid:
        limit = settings.max_explain_grid
        raise PayloadTooLarge(f"grid {grid} would run {occlusion_count(grid, grid):,} images through the model; the "
                              f"limit is {limit} patches per side ({occlusion_count(limit, limit):,} images; "
                              "EMBEDSERVE_MAX_EXPLAIN_GRID): ask for a coarser grid")


def clip_model(registry: Registry, name: str | None) -> TextModel:
    """The CLIP model `name` (the default one when None): a zero-shot explanation needs both towers,
    so an image encoder or a text encoder is a 422 that names the models which can."""
    manifests = dict(registry.manifests)  # a snapshot: a reload may change the table meanwhile
    clip = ", ".join(sorted(n for n, m in manifests.items() if m.kind == "image-text-encoder")) or "none loaded"
    manifest = manifests.get(name) if name is not None else None
    if manifest is None or manifest.kind == "image-text-encoder":
        model = registry.text_model(name)  # 404 for a name not loaded
        manifest = model.manifest
        if manifest.kind == "image-text-encoder":
            return model
    hint = " (an image encoder explains a neighbour: send index and id)" if manifest.kind == "image-encoder" else ""
    article = "an" if manifest.kind[0] in "aeiou" else "a"
    raise InvalidInput(f"model {manifest.name!r} is {article} {manifest.kind}: explaining a class needs a CLIP model, with an "
                       f"image and a text tower{hint}; name one of: {clip}")


async def zero_shot_target(registry: Registry, body: ExplainRequest) -> tuple[ImageModel, ExplainTarget, Scores]:
    """The image side of the request's CLIP model, what is explained, and the score of each embedding."""
    settings = registry.settings
    check_text_chars([body.label], settings, ["label"])
    label = body.label.strip()
    if not label:
        raise InvalidInput("label is empty: name the class to explain, e.g. \"label\": \"a sneaker\"")
    classes = check_classes(body.classes, settings) if body.classes is not None else [label]
    position = next((i for i, c in enumerate(classes) if c.casefold() == label.casefold()), None)
    if position is None:
        raise InvalidInput(f"label {label!r} is not one of the classes {classes}: add it to them, or leave classes "
                           "out to explain its cosine alone")
    templates = check_templates(body.templates, settings)
    check_prompts(classes, templates, settings)
    if body.classes is None and body.normalization is not None:
        raise InvalidInput("normalization applies to label's probability among classes: send classes too, or leave "
                           "normalization out to explain the plain cosine")
    model = clip_model(registry, body.model)
    image_model = registry.image_model(model.manifest.name, model.manifest.version)  # the same bundle's image side
    if body.classes is None:
        matrix, _ = await class_matrix(registry, model, classes, templates, "none")  # (1, D)
        target = ExplainTarget(kind="zero-shot", label=label, templates=templates)

        def scores(embeddings: np.ndarray) -> np.ndarray:
            return unit_rows(embeddings) @ matrix[0]  # (n,) cosines
    else:
        normalization = check_normalization(body.normalization, model, settings)
        matrix, offsets = await class_matrix(registry, model, classes, templates, normalization)  # (C, D), (C,)
        scale = logit_scale(image_model.manifest)
        target = ExplainTarget(kind="zero-shot", label=classes[position], classes=classes, templates=templates,
                               normalization=normalization)

        def scores(embeddings: np.ndarray) -> np.ndarray:
            return classify(embeddings, matrix, scale, offsets)[:, position]  # (n,) label's probability
    return image_model, target, scores


async def neighbour_target(registry: Registry, body: ExplainRequest) -> tuple[ImageModel, ExplainTarget, Scores]:
    """The image model the index was built with, what is explained, and the score of each embedding."""
    index = await registry.index(body.index)  # taken once: the item and the model are this version's
    name = index.manifest.name
    try:
        item = unit_rows(await asyncio.to_thread(index.vector, body.id))  # (D,)
    except KeyError:
        raise UnknownId(f"id {body.id} is not in index {name!r}; name an item it holds") from None
    image_model = registry.image_model(*index_model(index, "the image", "explain a class of a CLIP model instead (label)"))
    target = ExplainTarget(kind="neighbour", index=name, index_version=index.manifest.version, id=body.id)

    def scores(embeddings: np.ndarray) -> np.ndarray:
        return unit_rows(embeddings) @ item  # (n,) cosines
    return image_model, target, scores


async def occlusion_scores(image: np.ndarray, rows: int, cols: int, batcher: MicroBatcher, scores: Scores) -> np.ndarray:
    """The score of each input of the occlusion sequence of `image` (C, H, W): (rows * cols + 1,).
    The copies are built (in a thread) and submitted one model batch at a time, so however fine
    the grid, one batch of copies and its embeddings are all that is held at once."""
    total, step = occlusion_count(rows, cols), batcher.max_batch_size
    parts = []
    for start in range(0, total, step):
        batch = await asyncio.to_thread(occlusion_batch, image, rows, cols, start, min(start + step, total))  # (n, C, H, W)
        parts.append(scores(await batcher.submit(batch)))  # (n,)
    return np.concatenate(parts)  # (rows * cols + 1,)


@router.post(
    "/explain",
    response_model=ExplainResponse,
    summary="Where in an image the evidence for a zero-shot class or a neighbour lies (occlusion map)",
    responses=error_responses(404, 413, 415, 429, 503),
)
async def explain(body: ExplainRequest, registry: Annotated[Registry, Depends(get_registry)]) -> Response:
    check_grid(body.grid, registry.settings)
    blob = decode_base64(body.image, 0)
    target_for = zero_shot_target if body.label is not None else neighbour_target
    image_model, target, scores = await target_for(registry, body)
    manifest, batcher = image_model.manifest, image_model.batcher
    image = (await model_input([blob], manifest, registry.images))[0]  # (C, H, W), normalised as the model takes it
    rows, cols = grid_shape(image.shape[1], image.shape[2], body.grid)
    score, drops = drop_map(await occlusion_scores(image, rows, cols, batcher, scores), rows, cols)  # (rows, cols)
    overlay = None
    if body.overlay:
        png = await asyncio.to_thread(lambda: overlay_png(input_view(image, manifest.preprocessing), drops))
        overlay = base64.b64encode(png).decode()
    return model_response(ExplainResponse(model=manifest.name, version=manifest.version, target=target, score=score,
                                          grid=drops.tolist(), rows=rows, cols=cols, overlay=overlay))
