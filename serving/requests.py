"""Reading request bodies that carry images: a multipart form of files, or JSON with base64.

The routes that take images (/embed/image, /zero-shot, /search) read their bodies here, so each
accepts the same two shapes, counts images against the same limit and answers the same errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.datastructures import FormData, UploadFile

from runtime.files import NAME_MAX_CHARS, NAME_PATTERN, check_name
from serving.errors import InvalidInput, PayloadTooLarge, unsupported_content_type
from serving.settings import Settings

FILES_FIELD = "files"  # the multipart field that carries the images
FILES_SCHEMA = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}  # the `files` field, for the docs
JsonBody = TypeVar("JsonBody", bound=BaseModel)


def plain_name(name: str) -> str:
    """`name` if it names one folder (runtime.files.check_name), else ValueError saying what to fix."""
    return check_name(name)


# A client's model, version, index or job name, checked as the request is read (a 422 naming the field).
Name = Annotated[str, Field(max_length=NAME_MAX_CHARS, json_schema_extra={"pattern": NAME_PATTERN}),
                 AfterValidator(plain_name)]


MAX_JSON_DEPTH = 32  # nesting a request body may have; metadata deeper than this cannot be served back
FAST_CHECK_MIN_ITEMS = 64  # lists longer than this (vectors) are first checked as numbers in one pass


def check_json(value: Any) -> None:
    """ValueError if `value` (parsed JSON) nests deeper than MAX_JSON_DEPTH, holds NaN or an
    infinity, or a string in it holds a lone surrogate. Python's JSON parser takes all three,
    none is JSON: NaN would be stored and served back as null, a body too deep to serialise
    would be stored and fail every search that finds it, and a surrogate ("\\ud800") is no
    character for the tokenizer or SQLite."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"the body nests more than {MAX_JSON_DEPTH} levels deep; flatten it")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("NaN and Infinity (or a number too large for a double) are not JSON numbers; send finite ones")
        if isinstance(item, str):
            if not item.isascii():  # isascii is O(1): base64 and plain English cost nothing here
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("a string holds a lone surrogate escape (\\ud800-\\udfff without its pair), "
                                     "which is no character: send valid Unicode") from None
        elif isinstance(item, dict):
            stack.extend((child, depth + 1) for child in (*item.keys(), *item.values()))
        elif isinstance(item, list):
            if len(item) > FAST_CHECK_MIN_ITEMS and _finite_numbers(item):
                continue  # a vector: its numbers checked at C speed, not one by one
            stack.extend((child, depth + 1) for child in item)



def _finite_numbers(items: list) -> bool:
    """Whether `items` are all finite numbers (or numeric strings, which hold no surrogate either);
    False sends the list to check_json's walk, which says precisely what is wrong."""
    try:
        values = np.fromiter(items, np.float64, len(items))  # (N,)
    except (TypeError, ValueError, OverflowError):
        return False
    return bool(np.isfinite(values).all())


class JsonRequest(BaseModel):
    """A JSON request body, read strictly: `true` is not 1 and "3" is not 3, so what the OpenAPI
    says a field holds is all it accepts; and it is plain JSON (check_json)."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="before")
    @classmethod
    def strings_are_unicode(cls, data: Any) -> Any:
        check_json(data)
        return data


def exactly_one_of(*fields: str) -> dict:
    """A model's `json_schema_extra` saying what its validator checks: exactly one of `fields` is
    sent and not null."""
    return {"oneOf": [{"required": [field], "properties": {field: {"not": {"type": "null"}}}} for field in fields]}


def content_type(request: Request) -> str:
    """The request's media type, lower-cased, without parameters ("multipart/form-data")."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def decode_base64(text: str, position: int) -> bytes:
    """The bytes of one base64 image; `position` (0-based) names it in the error."""
    if text.startswith("data:"):  # a data URL: data:image/png;base64,<payload>
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"image {position} is not valid base64 ({e}); send the file's bytes base64-encoded") from e


def unit_vector(values: list[float], dim: int, what: str, index: str) -> np.ndarray:
    """A vector a request sent, as the (dim,) float32 unit vector that `index` compares, or
    InvalidInput naming `what`. Scaled by its largest component first: 1e300s and 1e-300s are
    directions too, whose squares would overflow to inf or vanish to zero."""
    if len(values) != dim:  # before a copy is made of what may be millions of values
        raise InvalidInput(f"{what} has {len(values):,} values; index {index!r} holds {dim}-dimensional vectors")
    vector = np.asarray(values, np.float64)  # (D,)
    scale = np.abs(vector).max() if np.isfinite(vector).all() else 0.0
    if not scale > 0:
        raise InvalidInput(f"{what} must be finite and not all zeros: it is a direction, compared by cosine")
    scaled = vector / scale  # (D,) within [-1, 1], one component ±1
    return (scaled / np.linalg.norm(scaled)).astype(np.float32)


def check_vector_length(values: list[float], settings: Settings, what: str) -> None:
    """PayloadTooLarge for a vector past EMBEDSERVE_MAX_VECTOR_DIM, before any work is done on it."""
    if len(values) > settings.max_vector_dim:
        raise PayloadTooLarge(f"{what} has {len(values):,} values; the limit is {settings.max_vector_dim:,} "
                              "(EMBEDSERVE_MAX_VECTOR_DIM), and it must be the index's dimension")


def check_text_chars(texts: Sequence[str], settings: Settings, names: Sequence[str]) -> None:
    """PayloadTooLarge for a text longer than EMBEDSERVE_MAX_TEXT_CHARS, before it is tokenised;
    `names[i]` says how the error names text i ("text 3", "class 0")."""
    long = next((i for i, text in enumerate(texts) if len(text) > settings.max_text_chars), None)
    if long is not None:
        raise PayloadTooLarge(f"{names[long]} has {len(texts[long]):,} characters; the limit is "
                              f"{settings.max_text_chars:,} (EMBEDSERVE_MAX_TEXT_CHARS): shorten it")


def check_image_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise InvalidInput(f"no images: send one or more as multipart files in field {FILES_FIELD!r} or as JSON {{\"images\": [base64, ...]}}")
    if count > settings.max_images_per_request:
        raise PayloadTooLarge(
            f"{count} images in one request; the limit is {settings.max_images_per_request}: split them over several requests"
        )


def decode_base64_images(texts: list[str], settings: Settings) -> list[bytes]:
    check_image_count(len(texts), settings)
    return [decode_base64(text, i) for i, text in enumerate(texts)]


async def read_form_images(form: FormData, settings: Settings) -> list[bytes]:
    """The bytes of the image files in a multipart form's `files` field (or `file`, which
    /search/image takes and clients send by habit), in order."""
    parts = form.getlist(FILES_FIELD) or form.getlist("file")
    check_image_count(len(parts), settings)
    if any(not isinstance(p, UploadFile) for p in parts):
        raise InvalidInput(f"multipart field {FILES_FIELD!r} must hold files, not text; attach each image as a file")
    return [await p.read() for p in parts]


def form_text(form: FormData, field: str) -> str | None:
    """An optional text field of a multipart form; None when absent, empty or a file."""
    value = form.get(field)
    return value if isinstance(value, str) and value else None


def form_list(values: list, field: str) -> list[str]:
    """A multipart list field: one JSON list (`classes=["a", "b"]`) or the field repeated."""
    if any(not isinstance(v, str) for v in values):
        raise InvalidInput(f"multipart field {field!r} must be text, not a file")
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            parsed = json.loads(values[0])
        except json.JSONDecodeError as e:
            raise InvalidInput(f"multipart field {field!r} starts like a JSON list but is not one ({e}); "
                               'send ["a", "b"] or repeat the field once per value') from None
        if not isinstance(parsed, list) or any(not isinstance(v, str) for v in parsed):
            raise InvalidInput(f"multipart field {field!r} must be a JSON list of strings")
        try:
            check_json(parsed)  # JSON in a form field is read as strictly as a JSON body
        except ValueError as e:
            raise InvalidInput(f"multipart field {field!r}: {e}") from None
        return parsed
    return list(values)


async def read_json_body(request: Request, model: type[JsonBody], shape: str) -> JsonBody:
    """The body of a non-multipart request validated as `model`: a 415 for another content type,
    else InvalidInput showing the expected `shape` and each problem."""
    media_type = content_type(request)
    body = await request.body()
    if media_type not in ("application/json", ""):
        raise unsupported_content_type(media_type)
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise InvalidInput(f"the JSON body must be {shape}: {problems}") from None


def json_body_doc(json_model: type[BaseModel]) -> dict:
    """`openapi_extra` for a route that reads a JSON body itself (read_json_body), so FastAPI
    cannot describe it: JSON shaped as `json_model`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": json_model.model_json_schema()}}}}


def request_body_doc(form_properties: dict[str, Any], form_required: list[str], json_model: type[BaseModel]) -> dict:
    """`openapi_extra` for a route that reads its body itself, so FastAPI cannot describe it: a
    multipart form with `form_properties`, or JSON shaped as `json_model`."""
    form = {"type": "object", "properties": form_properties, "required": form_required}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": json_model.model_json_schema()},
    }}}
