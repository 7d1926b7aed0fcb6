"""POST /explain on a CLIP-kind bundle built by hand so that the answer is known: its image tower
sees the class "cat" only in the top-left 4x4 pixels of a 16x16 input, so an occlusion map of
"cat" must put all its evidence in that corner."""

import base64
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from index.vector_index import VectorIndex
from runtime.bundle import Manifest, OnnxIO, TokenizerSpec, write_bundle
from runtime.preprocessing import PreprocessingSpec
from serving.app import create_app
from serving.settings import Settings

SIDE, CORNER, DIM, CONTEXT = 16, 4, 4, 8
SPEC = PreprocessingSpec(mode="L", resize=SIDE, crop=SIDE, mean=(0.5,), std=(0.5,))
VOCAB = {"[PAD]": 0, "[UNK]": 1, "cat": 2, "dog": 3}
TEMPLATES = ["{}"]  # a prompt is the class name alone, so its embedding is the word's one row
BATCH = 8  # the server's max_batch_size here: a 4x4 map's 17 inputs take three model calls


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def corner_image_encoder() -> onnx.ModelProto:
    """images (B, 1, 16, 16) → flatten @ W + b (B, 4): dimension 0 is 3 × the mean of the top-left
    4x4 pixels (the "cat" evidence), dimension 1 a constant 1 (which "dog" reads), dimension 2 a
    faint 0.2 × the mean of every other pixel (read by no class), dimension 3 zero."""
    corner = np.zeros((SIDE, SIDE), bool)
    corner[:CORNER, :CORNER] = True
    weights = np.zeros((SIDE * SIDE, DIM), np.float32)
    weights[corner.ravel(), 0] = 3.0 / corner.sum()
    weights[~corner.ravel(), 2] = 0.2 / (~corner).sum()
    bias = np.array([0, 1, 0, 0], np.float32)
    return _model(helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["raw"]),
         helper.make_node("Add", ["raw", "b"], ["embeddings"])],
        "corner",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", DIM])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    ))


def word_text_encoder() -> onnx.ModelProto:
    """ids, attention_mask (B, T) → the sum of the attended tokens' rows (B, 4): "cat" is axis 0,
    "dog" axis 1, any other word axis 3 (where no image points), padding nothing."""
    rows = np.zeros((len(VOCAB), DIM), np.float32)
    rows[VOCAB["cat"], 0] = rows[VOCAB["dog"], 1] = rows[VOCAB["[UNK]"], 3] = 1.0
    return _model(helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["tokens"]),  # (B, T, D)
         helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask3"]),  # (B, T, 1)
         helper.make_node("Mul", ["tokens", "mask3"], ["kept"]),
         helper.make_node("ReduceSum", ["kept", "seq"], ["embeddings"], keepdims=0)],  # (B, D)
        "words",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", CONTEXT]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", CONTEXT])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", DIM])],
        [numpy_helper.from_array(rows, "E"), numpy_helper.from_array(np.array([2], np.int64), "last"),
         numpy_helper.from_array(np.array([1], np.int64), "seq")],
    ))


def word_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.enable_truncation(max_length=CONTEXT)
    tokenizer.enable_padding(length=CONTEXT, pad_id=VOCAB["[PAD]"], pad_token="[PAD]")
    return tokenizer


def write_corner_bundles(artifacts: Path) -> str:
    """The CLIP-kind bundle 'corner' and the text encoder 'words' (its text tower alone); returns
    corner's version."""
    text_io = OnnxIO(("ids", "attention_mask"), "embeddings")
    clip = Manifest(name="corner", kind="image-text-encoder", method="clip", dim=DIM, normalized=False,
                    files={"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.onnx",
                           "tokenizer": "tokenizer.json"},
                    preprocessing=SPEC, tokenizer=TokenizerSpec("tokenizer.json", CONTEXT),
                    onnx={"image_encoder": OnnxIO(("images",), "embeddings"), "text_encoder": text_io}, logit_scale=10.0)
    words = Manifest(name="words", kind="text-encoder", method="sentence-transformers", dim=DIM, normalized=False,
                     files={"text_encoder": "text_encoder.onnx", "tokenizer": "tokenizer.json"},
                     tokenizer=TokenizerSpec("tokenizer.json", CONTEXT), onnx={"text_encoder": text_io})

    def write_text_side(folder: Path) -> None:
        onnx.save(word_text_encoder(), str(folder / "text_encoder.onnx"))
        word_tokenizer().save(str(folder / "tokenizer.json"))

    def write_both(folder: Path) -> None:
        write_text_side(folder)
        onnx.save(corner_image_encoder(), str(folder / "image_encoder.onnx"))

    write_bundle(artifacts, words, write_text_side)
    return write_bundle(artifacts, clip, write_both).manifest.version


def corner_png(seed: int = 0, white_corner: bool = True) -> bytes:
    """A 16x16 greyscale noise image whose top-left 4x4 is white (the "cat" evidence at full strength)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(SIDE, SIDE), dtype=np.uint8)
    if white_corner:
        pixels[:CORNER, :CORNER] = 255
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    from tests.conftest import write_tiny_image_bundle

    artifacts = tmp_path_factory.mktemp("explain")
    version = write_corner_bundles(artifacts)
    write_tiny_image_bundle(artifacts)  # 'tiny': an image encoder with no text tower
    items = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)  # 7 points along cat's axis, 8 along dog's
    VectorIndex.build(np.array([7, 8]), items, [{"name": "cat"}, {"name": "dog"}], model="corner",
                      model_version=version).save(artifacts, "shelf")
    return artifacts


@pytest.fixture(scope="module")
def client(artifacts: Path):
    settings = Settings(artifacts_dir=artifacts, max_batch_size=BATCH, max_explain_grid=8, default_text_model="corner")
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def calls(client: TestClient, monkeypatch):
    """What reaches corner's image model during a test: the rows of each submit and of each encode call."""
    batcher = client.app.state.registry.image_models[("corner", "v1")].batcher
    seen = {"submitted": [], "encoded": []}
    submit, encode = batcher.submit, batcher.encoder.encode

    async def counting_submit(items):
        seen["submitted"].append(len(items))
        return await submit(items)

    def counting_encode(batch):
        seen["encoded"].append(len(batch))
        return encode(batch)

    monkeypatch.setattr(batcher, "submit", counting_submit)
    monkeypatch.setattr(batcher.encoder, "encode", counting_encode)
    return seen


def explain(client: TestClient, **body):
    return client.post("/explain", json={"image": b64(corner_png()), **body})


def test_the_map_of_a_class_puts_its_evidence_in_the_corner_the_model_reads(client: TestClient):
    response = explain(client, label="cat", classes=["cat", "dog"], templates=TEMPLATES, grid=4)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["rows"], body["cols"]) == ("corner", 4, 4)
    assert body["target"] == {"kind": "zero-shot", "label": "cat", "classes": ["cat", "dog"], "templates": TEMPLATES,
                              "normalization": "none", "index": None, "index_version": None, "id": None}
    drops = np.array(body["grid"])  # (4, 4), top row first
    assert body["score"] > 0.99  # cat wins clearly while its corner is seen...
    assert drops[0, 0] == pytest.approx(body["score"], abs=1e-3)  # ...and loses everything when it is masked
    assert np.unravel_index(np.argmax(drops), drops.shape) == (0, 0)
    assert np.abs(drops.ravel()[1:]).max() < 1e-3  # the rest of the image is no evidence either way
    assert body["overlay"] is None


def test_the_score_is_the_probability_zero_shot_answers(client: TestClient):
    zero_shot = client.post("/zero-shot", json={"images": [b64(corner_png())], "classes": ["cat", "dog"],
                                                "templates": TEMPLATES}).json()
    cat = next(label for label in zero_shot["results"][0]["labels"] if label["label"] == "cat")
    body = explain(client, label="cat", classes=["cat", "dog"], templates=TEMPLATES, grid=2).json()
    assert body["score"] == pytest.approx(cat["probability"], abs=1e-6)


def test_without_classes_the_map_is_of_the_cosine_to_the_label(client: TestClient):
    body = explain(client, label="cat", templates=TEMPLATES).json()  # the default grid: 8 x 8 patches of 2x2 pixels
    drops = np.array(body["grid"])
    assert (body["rows"], body["cols"]) == (8, 8) and body["target"]["classes"] is None
    assert body["score"] == pytest.approx(3 / np.sqrt(10), abs=1e-3)  # embedding about (3, 1, 0, 0) against (1, 0, 0, 0)
    # a 2x2 patch is a quarter of the corner: masking it leaves 2.25 of the 3 on cat's axis
    np.testing.assert_allclose(drops[:2, :2], body["score"] - 2.25 / np.sqrt(2.25**2 + 1), atol=1e-3)
    drops[:2, :2] = 0
    assert np.abs(drops).max() < 1e-3


def test_a_neighbour_s_map_shows_evidence_for_it_and_against_the_other(client: TestClient):
    toward = explain(client, index="shelf", id=7, grid=4).json()
    assert toward["target"] == {"kind": "neighbour", "label": None, "classes": None, "templates": None,
                                "normalization": None, "index": "shelf", "index_version": "v1", "id": 7}
    assert toward["score"] == pytest.approx(3 / np.sqrt(10), abs=1e-3)
    assert toward["grid"][0][0] == pytest.approx(toward["score"], abs=1e-3)  # masked, nothing is left on cat's axis
    away = np.array(explain(client, index="shelf", id=8, grid=4).json()["grid"])
    assert away[0, 0] == pytest.approx(1 / np.sqrt(10) - 1, abs=1e-3)  # masking the corner makes it all dog
    assert np.abs(away.ravel()[1:]).max() < 1e-3


def test_the_model_runs_grid_squared_plus_one_rows_a_batch_at_a_time(client: TestClient, calls):
    assert explain(client, label="cat", classes=["cat", "dog"], templates=TEMPLATES, grid=5).status_code == 200
    assert sum(calls["encoded"]) == 5 * 5 + 1
    assert calls["submitted"] == [8, 8, 8, 2]  # built and sent one batch at a time, never all 26 copies at once
    assert max(calls["encoded"]) <= BATCH


def test_a_grid_past_the_limit_is_refused_before_the_model_runs(client: TestClient, calls):
    response = explain(client, label="cat", grid=9)
    assert response.status_code == 413
    assert "EMBEDSERVE_MAX_EXPLAIN_GRID" in response.json()["detail"] and "limit is 8" in response.json()["detail"]
    assert calls["encoded"] == []
    assert explain(client, label="cat", grid=0).status_code == 422


def test_the_overlay_is_the_model_s_view_with_the_evidence_in_red(client: TestClient):
    body = explain(client, label="cat", classes=["cat", "dog"], templates=TEMPLATES, grid=4, overlay=True).json()
    image = Image.open(io.BytesIO(base64.b64decode(body["overlay"])))
    assert image.format == "PNG" and image.size == (224, 224)  # 16 pixels, scaled 14 times
    pixels = np.asarray(image.convert("RGB")).astype(int)  # (224, 224, 3)
    corner, rest = pixels[:CORNER * 14, :CORNER * 14], pixels[CORNER * 14:]
    assert (corner[..., 0] > corner[..., 2] + 100).all()  # white, tinted red
    source = np.asarray(Image.open(io.BytesIO(corner_png())))[CORNER:]  # (12, 16): the untinted rows below the corner
    np.testing.assert_allclose(rest[::14, ::14, 0], source, atol=1)


@pytest.mark.parametrize("body, status, words", [
    ({"label": "cat", "classes": ["dog", "bird"], "templates": TEMPLATES}, 422, "not one of the classes"),
    ({"label": "  ", "templates": TEMPLATES}, 422, "label is empty"),
    ({"label": "cat", "normalization": "none"}, 422, "send classes too"),
    ({"label": "cat", "model": "tiny"}, 422, "name one of: corner"),
    ({"label": "cat", "model": "words"}, 422, "name one of: corner"),
    ({"label": "cat", "model": "nope"}, 404, "nope"),
    ({"index": "shelf", "id": 99}, 404, "id 99"),
    ({"index": "nope", "id": 7}, 404, "nope"),
    ({"index": "shelf"}, 422, "index and id together"),
    ({"label": "cat", "index": "shelf", "id": 7}, 422, "not both"),
    ({"index": "shelf", "id": 7, "classes": ["a", "b"]}, 422, "go with a label"),
    ({}, 422, "say what to explain"),
])
def test_bad_targets_say_what_to_fix(client: TestClient, body, status, words):
    response = explain(client, **body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


@pytest.mark.parametrize("image, status", [
    ("%%% not base64", 422),
    (b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), 422),  # a PNG's signature, then nothing readable
    (b64(b"%PDF-1.4 not an image"), 415),
    ("data:image/png;base64," + b64(corner_png()), 200),
])
def test_bad_images_are_client_errors(client: TestClient, image: str, status: int):
    response = client.post("/explain", json={"image": image, "label": "cat", "grid": 2})
    assert response.status_code == status, response.text


def test_explain_is_counted_in_metrics_and_documented(client: TestClient):
    explain(client, label="cat", grid=2)
    metrics = client.get("/metrics").text
    assert 'route="/explain"' in metrics
    operation = client.app.openapi()["paths"]["/explain"]["post"]
    assert operation["summary"] and {"404", "413", "422"} <= set(operation["responses"])
