"""Zero-shot's request checks and class matrices, shared by the routes that classify images by
class names: /zero-shot, which ranks the classes, and /explain, which maps where one class's
evidence lies. A router never imports another router, so what both need lives here.
"""

from __future__ import annotations

import numpy as np

from index.class_matrix import NORMALIZATIONS
from runtime.bundle import Manifest
from runtime.templates import EVAL_TEMPLATES
from serving.embedding import tokenize
from serving.errors import InvalidInput, PayloadTooLarge
from serving.registry import Registry, TextModel
from serving.requests import check_text_chars
from serving.settings import Settings

DEFAULT_LOGIT_SCALE = 100.0  # CLIP's cap, for a bundle that records none


def logit_scale(manifest: Manifest) -> float:
    """The softmax's scale for a CLIP model's cosines: the bundle's learned one, else CLIP's cap."""
    return manifest.logit_scale if manifest.logit_scale is not None else DEFAULT_LOGIT_SCALE


def check_classes(classes: list[str], settings: Settings) -> list[str]:
    """The class names, stripped, or InvalidInput/PayloadTooLarge saying what to fix."""
    if len(classes) < 2:
        got = "no classes" if not classes else f"one class ({classes[0]!r})"
        raise InvalidInput(f"{got}: name two or more classes to choose between, e.g. \"classes\": [\"a sneaker\", \"a bag\"]")
    if len(classes) > settings.max_classes:
        raise PayloadTooLarge(f"{len(classes)} classes in one request; the limit is {settings.max_classes}: send fewer")
    check_text_chars(classes, settings, [f"class {i}" for i in range(len(classes))])
    names = [c.strip() for c in classes]
    empty = [i for i, c in enumerate(names) if not c]
    if empty:
        raise InvalidInput(f"class {empty[0]} is empty; every class needs a name")
    seen: dict[str, str] = {}
    for name in names:
        key = name.casefold()
        if key in seen:
            raise InvalidInput(f"classes {seen[key]!r} and {name!r} are the same class (case and spaces aside); send each once")
        seen[key] = name
    return names


def check_templates(templates: list[str] | None, settings: Settings) -> list[str]:
    """The templates (EVAL_TEMPLATES when None), or InvalidInput/PayloadTooLarge saying what to fix."""
    if templates is None:
        return list(EVAL_TEMPLATES)
    if not templates:
        raise InvalidInput("templates is empty: send at least one, such as \"a photo of a {}.\", or leave it out for the defaults")
    if len(templates) > settings.max_templates:
        raise PayloadTooLarge(f"{len(templates)} templates in one request; the limit is {settings.max_templates}: send fewer")
    check_text_chars(templates, settings, [f"template {i}" for i in range(len(templates))])
    for i, template in enumerate(templates):
        if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
            raise InvalidInput(f"template {i} ({template!r}) must hold exactly one '{{}}' where the class name goes, "
                               "and no other braces")
    if len(set(templates)) != len(templates):
        raise InvalidInput("templates repeat; send each once")
    return list(templates)


def check_normalization(normalization: str | None, model: TextModel, settings: Settings) -> str:
    """The normalization to apply: the request's, else the server default ("none" when that is
    querybank and the model has no bank); InvalidInput for an unknown one or a bank it lacks."""
    if normalization is None:
        return settings.zero_shot_normalization if model.query_bank is not None else "none"
    if normalization not in NORMALIZATIONS:
        raise InvalidInput(f"normalization {normalization!r} is not one of {' or '.join(map(repr, NORMALIZATIONS))}: "
                           "send one of those, or leave it out for the server's default")
    if normalization == "querybank" and model.query_bank is None:
        manifest = model.manifest
        raise InvalidInput(f"model {manifest.name!r} version {manifest.version!r} has no query bank (it was exported "
                           "without its training data): send \"normalization\": \"none\", or re-export it")
    return normalization


def check_prompts(classes: list[str], templates: list[str], settings: Settings) -> None:
    """PayloadTooLarge when classes × templates (each a text-tower row) is past the server's limit."""
    if len(classes) * len(templates) > settings.max_prompts:
        raise PayloadTooLarge(f"{len(classes)} classes × {len(templates)} templates = {len(classes) * len(templates):,} "
                              f"prompts; the limit is {settings.max_prompts:,} (EMBEDSERVE_MAX_PROMPTS): send fewer classes or templates")


async def class_matrix(registry: Registry, model: TextModel, classes: list[str], templates: list[str],
                       normalization: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(C, D) unit rows for `classes` and, for querybank, their (C,) query-bank offsets (else None),
    from the registry's cache or computed now through the text tower's micro-batcher."""

    async def encode_prompts(prompts: list[str]) -> np.ndarray:
        # the cache orders prompts class by class, template by template: name them the same way
        names = [f"the prompt for class {c!r} from template {t!r}" for c in classes for t in templates]
        # (C * K, 2, T); 422 for a prompt over the context unless the server truncates
        tokens = await tokenize(prompts, model, names, registry.settings.auto_truncate)
        # the batcher sends a large matrix a batch at a time, sharing the tower with other requests
        return await model.batcher.submit(tokens)  # (C * K, D), as the tower gives them: the class matrix normalises

    manifest = model.manifest
    query_bank = model.query_bank if normalization == "querybank" else None
    return await registry.class_matrices.get(manifest.name, manifest.version, classes, templates, encode_prompts, query_bank)
