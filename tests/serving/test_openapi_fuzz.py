"""Schemathesis over the live app's OpenAPI: every route, given valid and hostile input alike,
answers without a 5xx and with a status, content type, headers and body its OpenAPI documents.

The app is the real one (serving.app.create_app, API keys on) over real tiny bundles: a CLIP
model, an image encoder, word vectors and two indexes, so that requests reach the models rather
than stop at a 404. The run is seeded and derandomised: a failure fails the same way on every
machine. `make test` runs a few examples per operation; `make fuzz` sets EMBEDSERVE_FUZZ_EXAMPLES
for a long run.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import CHECKS as CHECK_REGISTRY, load_all_checks
from schemathesis.core.file_samples import FILE_SAMPLES
from schemathesis.python import asgi

from export.word_vectors import write_word_vectors_bundle
from index.vector_index import VectorIndex
from serving.app import create_app
from serving.settings import Settings

EXAMPLES = int(os.environ.get("EMBEDSERVE_FUZZ_EXAMPLES", "5"))  # per operation and generation mode
DIM = 16  # both tiny models' (tests/conftest.py), hence both indexes'
WORDS = ["king", "queen", "man", "woman", "café", "apple", "banana"]
MODELS = ["clip", "tiny", "words"]
INDEXES = ["pics", "clothes"]
KEY = "fuzz-key"  # the server checks keys, as one on a network does; every case sends this one
# The limits the app runs with: small, so that hostile counts reach them quickly.
LIMITS = dict(api_keys=KEY, default_image_model="tiny", default_text_model="clip", default_word_model="words",
              default_index="pics", max_k=50, max_texts_per_request=8, max_images_per_request=4, max_classes=16,
              max_templates=4)

# What each response is checked for: the built-in checks less those that need what this server
# does not have (resources that one call creates and the next finds: use_after_free,
# ensure_resource_availability; users who may not see each other's objects:
# object_level_authorization; a security scheme in the OpenAPI: ignored_auth) and
# positive_data_acceptance, which reads a 4xx for schema-valid input as a failure when the
# schema cannot say what this server rightly refuses (base64 that is not an image, a template
# without '{}', two classes that are one).
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
          "response_schema_conformance", "negative_data_rejection", "missing_required_header", "unsupported_method",
          "allow_header_conformance"]
CONFIG = schemathesis.Config.from_dict({
    "seed": 20261201,
    "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
    # 413 too: a body over a limit (more images than allowed) is rightly refused as too large
    "checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "413", "415", "422"]}},
    "phases": {"stateful": {"enabled": False}},
})


# Values a random string almost never hits, drawn mostly from what the app serves (and otherwise
# anything): without them nearly every valid case would stop at a 404 or at base64 that is not
# an image, and the models would never be fuzzed.

def _encode(pixels: np.ndarray, mode: str, fmt: str) -> bytes:
    image = Image.fromarray(pixels, "RGB").convert(mode)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


_IMAGE_MODES = {"PNG": ["L", "RGB", "RGBA", "P", "I;16", "1", "LA"], "JPEG": ["L", "RGB", "CMYK"],
                "GIF": ["P", "L"], "WEBP": ["RGB", "RGBA"], "BMP": ["RGB", "L"], "TIFF": ["RGB", "I;16", "F"]}
_image_bytes = st.one_of(
    st.tuples(st.integers(1, 48), st.integers(1, 48), st.integers(0, 2**32 - 1), st.sampled_from(sorted(_IMAGE_MODES)))
    .flatmap(lambda t: st.sampled_from(_IMAGE_MODES[t[3]]).map(lambda mode: _encode(
        np.random.default_rng(t[2]).integers(0, 256, size=(t[1], t[0], 3), dtype=np.uint8), mode, t[3]))),
    st.sampled_from(list(FILE_SAMPLES.values())),  # a PDF and a zip among them
    st.binary(max_size=64),
)
_image = st.tuples(_image_bytes, st.sampled_from(["", "data:image/png;base64,"])).map(
    lambda t: t[1] + base64.b64encode(t[0]).decode())
_form_text = st.one_of(st.sampled_from(["a sneaker", "a photo of a bag", "an ankle boot, worn", "T-shirt/top"]),
                       st.text(max_size=80), st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=400))
# JSON texts may also hold a lone surrogate, which JSON can escape ("\ud800") but no tokenizer read
_text = st.one_of(_form_text, st.just("a \ud800 b"),
                  st.tuples(st.text(max_size=8), st.characters(categories=["Cs"])).map("".join))
FORMATS = {
    "embedserve-model": st.one_of(st.sampled_from(MODELS), st.text(max_size=20)),
    "embedserve-index": st.one_of(st.sampled_from(INDEXES), st.text(max_size=20)),
    "embedserve-word": st.one_of(st.sampled_from(WORDS), st.text(max_size=20)),
    "embedserve-source": st.one_of(st.sampled_from([f"index:{name}" for name in INDEXES]), st.text(max_size=40)),
    "embedserve-image": _image,
    "embedserve-text": _text,
    "embedserve-form-text": _form_text,  # a multipart form cannot carry a lone surrogate
    "embedserve-input": st.one_of(_text, _image.map(lambda s: s if s.startswith("data:") else "data:image/png;base64," + s)),
}
# Which fields (properties, query, path and form parameters) draw from which of FORMATS.
FIELD_FORMATS = {"model": "embedserve-model", "index": "embedserve-index", "name": "embedserve-index",
                 "a": "embedserve-word", "b": "embedserve-word", "c": "embedserve-word", "word": "embedserve-word",
                 "source": "embedserve-source", "images": "embedserve-image", "image": "embedserve-image",
                 "texts": "embedserve-text", "text": "embedserve-text", "classes": "embedserve-text",
                 "input": "embedserve-input"}


def _with_format(schema: dict, fmt: str) -> None:
    """Put `fmt` on the strings `schema` allows: itself, its array items, its anyOf branches."""
    if schema.get("type") == "string":
        schema["format"] = fmt
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        _with_format(schema["items"], fmt)
    for branch in schema.get("anyOf", []):
        _with_format(branch, fmt)


def _steer(node, components: dict, seen: set[str], form: bool = False) -> None:
    """FORMATS on the fields of the request schemas under `node`, following $refs into `components`
    (`form`: under a multipart body)."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/components/schemas/") and ref not in seen:
            seen.add(ref)
            _steer(components[ref.rpartition("/")[2]], components, seen)
        for name, prop in (node.get("properties") or {}).items():
            if name in FIELD_FORMATS and isinstance(prop, dict):
                fmt = FIELD_FORMATS[name]
                _with_format(prop, "embedserve-form-text" if form and fmt == "embedserve-text" else fmt)
            if name == "vector" and isinstance(prop, dict):  # of the indexes' dimension, mostly
                for branch in [prop, *prop.get("anyOf", [])]:
                    if branch.get("type") == "array":
                        branch.update(minItems=DIM, maxItems=DIM)
        if node.get("in") in ("query", "path") and node.get("name") in FIELD_FORMATS:
            _with_format(node["schema"], FIELD_FORMATS[node["name"]])
        for key, value in node.items():
            if key != "responses":
                _steer(value, components, seen, form or key == "multipart/form-data")
    elif isinstance(node, list):
        for value in node:
            _steer(value, components, seen, form)


def steered(openapi: dict) -> dict:
    """The app's OpenAPI, with FORMATS on the request fields FIELD_FORMATS names. Formats steer
    what valid cases hold; what counts as valid, and every response schema, stay the app's."""
    openapi = copy.deepcopy(openapi)
    _steer(openapi["paths"], openapi.get("components", {}).get("schemas", {}), set())
    return openapi


for _name, _strategy in FORMATS.items():
    schemathesis.openapi.format(_name, _strategy)
# The OpenAPI is read from an app built with the same settings but no artifacts: pytest collects
# one test per operation before any fixture has made the bundles the served app loads.
schema = schemathesis.openapi.from_dict(steered(create_app(Settings(artifacts_dir=Path("unused"), **LIMITS)).openapi()),
                                        config=CONFIG)


@pytest.fixture(scope="module")
def app(tmp_path_factory, clip_bundle_artifacts: Path):
    """The app over 'clip', 'tiny', word vectors 'words', and indexes 'pics' (built with tiny)
    and 'clothes' (with clip), in a private copy that the fuzzed writes may change."""
    artifacts = Path(shutil.copytree(clip_bundle_artifacts, tmp_path_factory.mktemp("fuzz") / "artifacts"))
    rng = np.random.default_rng(0)
    write_word_vectors_bundle(artifacts, "words", WORDS, np.arange(len(WORDS), 0, -1) * 10,
                              rng.normal(size=(len(WORDS), 8)).astype(np.float32))
    VectorIndex.build(np.arange(8), rng.normal(size=(8, DIM)).astype(np.float32), [{"seed": i} for i in range(8)],
                      model="tiny", model_version="v1").save(artifacts, "pics")
    VectorIndex.build(np.arange(4), rng.normal(size=(4, DIM)).astype(np.float32),
                      [{"name": n} for n in ("sneaker", "bag", "dress", "coat")], model="clip",
                      model_version="v1").save(artifacts, "clothes")
    yield create_app(Settings(artifacts_dir=artifacts, **LIMITS))
    asgi.shutdown_lifespans()  # schemathesis starts the app's lifespan at its first call; this stops it


load_all_checks()
_CHECKS = [check for check in CHECK_REGISTRY.get_all() if check.__name__ in CHECKS]


@schema.parametrize()
def test_every_route_answers_as_documented_and_never_5xx(case: schemathesis.Case, app):
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {KEY}"}, checks=_CHECKS)


def _nested(depth: int) -> dict:
    return {"a": _nested(depth - 1)} if depth else {}


VECTOR = [1.0] * DIM
# JSON that Python's parser takes and a generator rarely makes: each must get a documented 4xx.
HOSTILE = [
    ("/search", {"vector": [float("nan")] * DIM}),
    ("/search", {"vector": [float("inf")] + VECTOR[1:]}),
    ("/search", {"vector": [1e300] * DIM}),  # a direction like any other: 200
    ("/search", {"id": True}),
    ("/search", {"id": 2**64}),
    ("/search", {"id": 1, "k": 10**100}),
    ("/search", {"text": "a \ud800 b", "index": "clothes"}),
    ("/search", {"vector": VECTOR, "index": "pics", "k": 3, "extra": _nested(100)}),
    ("/indexes/pics/items", {"items": [{"id": 900, "vector": VECTOR, "metadata": _nested(64)}]}),
    ("/indexes/pics/items", {"items": [{"id": 901, "vector": VECTOR, "metadata": {"a": float("nan")}}]}),
    ("/indexes/pics/items", {"items": [{"id": 2**63, "vector": VECTOR}]}),
    ("/indexes/pics/items", {"items": [{"id": 902, "vector": [0.0] * DIM}]}),
    ("/embed/text", {"texts": ["\udfff"]}),
    ("/embed/text", {"texts": [True]}),
    ("/embed/text", {"texts": ["x" * 100_000]}),
    ("/zero-shot", {"images": ["\ud800"], "classes": ["a", "b"]}),
    ("/zero-shot", {"images": ["AAAA"], "classes": ["a", "b"], "templates": ["{}"] * 100}),
    ("/v1/embeddings", {"model": "clip", "input": "\ud800"}),
    ("/v1/embeddings", {"model": "clip", "input": "a", "dimensions": 10**100}),
    ("/v1/embeddings", {"model": "clip", "input": ["data:image/png;base64,%%%"]}),
    ("/jobs", {"source": "index:" + "a" * 300, "model": "tiny", "index": "x"}),
    ("/jobs", {"source": "index:../models", "model": "tiny", "index": "x"}),
    ("/jobs", {"source": "index:pics", "model": "../indexes/pics", "index": "x"}),
    ("/jobs", {"source": "index:pics", "model": "tiny", "index": "x" * 300}),
]


@pytest.mark.parametrize("path, body", HOSTILE, ids=[f"{p} {str(b)[:40]}" for p, b in HOSTILE])
def test_hostile_json_gets_a_documented_4xx(path: str, body: dict, app):
    template = path.replace("/pics/", "/{name}/")
    # sent as Python writes it (NaN, Infinity, "\\ud800" and all), which requests would refuse to
    case = schema[template]["POST"].Case(body=json.dumps(body).encode(), media_type="application/json",
                                         path_parameters={"name": "pics"} if template != path else None)
    response = case.call_and_validate(app=app, headers={"Authorization": f"Bearer {KEY}"},
                                      checks=[c for c in _CHECKS if c.__name__ != "negative_data_rejection"])
    expected = range(200, 300) if body.get("vector") == [1e300] * DIM else range(400, 500)
    assert response.status_code in expected, response.text
