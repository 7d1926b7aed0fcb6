"""Schemathesis over the live app's OpenAPI: every route, given valid and hostile input alike,
answers without a 5xx and with a status, content type, headers and body its OpenAPI documents.

The app is the real one (serving.app.create_app, API keys on) over real tiny bundles: a CLIP
model, an image encoder, word vectors and two indexes, so that requests reach the models rather
than stop at a 404. The run is seeded and derandomised: a failure fails the same way on every
machine. `make test` runs a few examples per operation; `make fuzz` sets EMBEDSERVE_FUZZ_EXAMPLES
for a long run. JSON that a generator rarely makes (NaN, lone surrogates, deep nesting, numbers
past int64) is sent as well, case by case.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path
from urllib.parse import quote

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
    "phases": {"stateful": {"enabled": False}},  # the OpenAPI has no links between operations to follow
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
                       st.text(min_size=1, max_size=80),
                       st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=400))
# JSON texts may also hold a lone surrogate, which JSON can escape ("\ud800") but no tokenizer read
_text = st.one_of(_form_text, st.just("a \ud800 b"),
                  st.tuples(st.text(max_size=8), st.characters(categories=["Cs"])).map("".join))


def _mostly(known: list[str], size: int = 20) -> st.SearchStrategy[str]:
    """One of `known` three times in four, else any text."""
    return st.one_of(*[st.sampled_from(known)] * 3, st.text(min_size=1, max_size=size))


_model, _index, _word = _mostly(MODELS), _mostly(INDEXES), _mostly(WORDS)
# What a field of each name is drawn from in a valid case, in JSON bodies and query and path
# parameters alike (multipart fields: `_form_text` for texts, which a form cannot carry otherwise).
FIELDS = {
    "model": _model, "index": _index, "name": _index, "a": _word, "b": _word, "c": _word, "word": _word,
    "source": _mostly([f"index:{name}" for name in INDEXES], 40),
    "images": st.lists(_image, min_size=1, max_size=5), "image": _image, "text": _text,
    "texts": st.lists(_text, min_size=1, max_size=9), "classes": st.lists(_text, min_size=2, max_size=5, unique=True),
    "label": _text,  # /explain: mostly not among the classes (a 422); flatmap_case puts it there too
    "templates": st.one_of(*[st.lists(st.sampled_from(["a photo of a {}.", "{}", "a {}, in the dark"]), min_size=1,
                                      max_size=3, unique=True)] * 3, st.lists(st.text(max_size=20), min_size=1, max_size=5)),
    "input": st.one_of(_text, st.lists(st.one_of(_text, _image.map(lambda s: s if s.startswith("data:") else
                                                                    "data:image/png;base64," + s)), min_size=1, max_size=5)),
    "vector": st.lists(st.floats(-1e6, 1e6), min_size=DIM, max_size=DIM),  # of the indexes' dimension
}
FORM_FIELDS = {**FIELDS, "text": _form_text, "texts": st.lists(_form_text, min_size=1, max_size=9),
               "classes": st.lists(_form_text, min_size=2, max_size=5, unique=True)}

# The OpenAPI is read from an app built with the same settings but no artifacts: pytest collects
# one test per operation before any fixture has made the bundles the served app loads.
schema = schemathesis.openapi.from_dict(create_app(Settings(artifacts_dir=Path("unused"), **LIMITS)).openapi(),
                                        config=CONFIG)


@schema.hook
def flatmap_case(context, case: schemathesis.Case):
    """A valid case with its FIELDS drawn again, mostly from what the app serves; invalid cases
    stay as generated. The OpenAPI, what counts as valid, and every check stay the app's."""
    if case.meta is None or case.meta.generation.mode != schemathesis.GenerationMode.POSITIVE:
        return st.just(case)
    containers = [c for c in (case.query, case.path_parameters) if isinstance(c, dict)]
    form = case.media_type == "multipart/form-data"
    if isinstance(case.body, dict):
        containers.append(case.body)
    slots = [(c, key) for c in containers for key in c if key in FIELDS and c[key] is not None]  # None: not sent
    fields = FORM_FIELDS if form else FIELDS
    draws = [fields[key] for _, key in slots]

    def redrawn(values: tuple, label_among_classes: bool) -> schemathesis.Case:
        for (container, key), value in zip(slots, values):
            if container is case.path_parameters:  # sent as drawn, as schemathesis sends its own: "?" and ".." too
                value = quote(value, safe="").replace(".", "%2E")
            container[key] = value
        body = case.body if isinstance(case.body, dict) else {}
        if label_among_classes and body.get("label") is not None and body.get("classes"):
            body["label"] = body["classes"][0]  # so /explain gets past its label check and runs the model
        return case

    return st.tuples(st.tuples(*draws), st.booleans()).map(lambda drawn: redrawn(*drawn))


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
    ("/jobs", {"source": "a\u0000b", "model": "tiny", "index": "x"}),
    ("/search", {"id": 1, "where": {"seed": 10**30}}),
    ("/search", {"id": 1, "index": "pics/current"}),
    ("/v1/embeddings", {"model": "clip", "input": [[101, 2023, 102]]}),
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


def test_a_multipart_name_that_is_not_one_gets_a_documented_4xx(app):
    # a JSON object sent in a form field: its escaped surrogates make a name longer than a file name
    for index in (json.dumps({"a": "\ud800" * 50}), "a\u0000b", "pics/current"):
        case = schema["/search/image"]["POST"].Case(body={"file": FILE_SAMPLES["png"], "index": index},
                                                    media_type="multipart/form-data")
        response = case.call_and_validate(app=app, headers={"Authorization": f"Bearer {KEY}"},
                                          checks=[c for c in _CHECKS if c.__name__ != "negative_data_rejection"])
        assert response.status_code == 422, response.text


def test_json_in_a_form_field_is_read_as_strictly_as_a_json_body(app):
    case = schema["/zero-shot"]["POST"].Case(body={"files": [FILE_SAMPLES["png"]], "classes": '["\\ud800", "b"]'},
                                             media_type="multipart/form-data")
    response = case.call_and_validate(app=app, headers={"Authorization": f"Bearer {KEY}"},
                                      checks=[c for c in _CHECKS if c.__name__ != "negative_data_rejection"])
    assert response.status_code == 422 and "surrogate" in response.text, response.text
