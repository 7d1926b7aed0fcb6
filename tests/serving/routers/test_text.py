import base64
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from runtime.bundle import open_bundle
from runtime.preprocessing import decode_image, preprocess_batch
from runtime.tokens import encode_batch, load_tokenizer
from index.vector_index import VectorIndex
from serving.app import create_app
from serving.settings import Settings


@pytest.fixture(scope="module")
def client(clip_bundle_artifacts: Path):
    settings = Settings(artifacts_dir=clip_bundle_artifacts, max_texts_per_request=4, max_wait_ms=1)
    with TestClient(create_app(settings)) as client:
        yield client


def onnx_text_embeddings(artifacts: Path, texts: list[str]) -> np.ndarray:
    """The text tower run by hand: the bundle's tokenizer.json and text_encoder.onnx, unit rows (N, D)."""
    folder = artifacts / "models" / "clip" / "v1"
    ids, mask = encode_batch(load_tokenizer(folder / "tokenizer.json"), texts)
    session = ort.InferenceSession(str(folder / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"ids": ids, "attention_mask": mask})[0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_texts_come_back_normalised_in_order_as_the_tower_computes_them(client: TestClient, clip_bundle_artifacts: Path):
    texts = ["a sneaker", "a photo of a bag", "a dress für été"]
    response = client.post("/embed/text", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["dim"]) == ("clip", "v1", 16)
    embeddings = np.array(body["embeddings"])
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings, onnx_text_embeddings(clip_bundle_artifacts, texts), atol=1e-5)
    single = client.post("/embed/text", json={"texts": [texts[1]], "model": "clip"}).json()["embeddings"][0]
    np.testing.assert_allclose(single, embeddings[1], atol=1e-5)


def test_the_image_side_of_a_clip_model_serves_embed_image(client: TestClient, clip_bundle_artifacts: Path, make_png):
    response = client.post("/embed/image", params={"model": "clip"}, files=[("files", ("a.png", make_png(0), "image/png"))])
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "clip"
    # the image tower run by hand on the bundle's preprocessing
    bundle = open_bundle(clip_bundle_artifacts, "clip")
    session = ort.InferenceSession(str(bundle.file("image_encoder")), providers=["CPUExecutionProvider"])
    batch = preprocess_batch([decode_image(make_png(0))], bundle.manifest.preprocessing)  # (1, C, H, W)
    expected = session.run(None, {session.get_inputs()[0].name: batch})[0]  # (1, D)
    np.testing.assert_allclose(response.json()["embeddings"], expected / np.linalg.norm(expected), atol=1e-5)


@pytest.mark.parametrize(
    "body, status, error, words",
    [
        ({"texts": []}, 422, "invalid_input", "no texts"),
        ({"texts": ["a bag", "  "]}, 422, "invalid_input", "text 1"),
        ({"texts": ["a bag " * 30]}, 422, "invalid_input", "24 tokens"),  # the context length
        ({"texts": ["a"] * 5}, 413, "payload_too_large", "limit is 4"),
        ({"texts": ["a bag"], "model": "nope"}, 404, "unknown_model", "clip"),
        ({"texts": ["a bag"], "model": "tiny"}, 422, "invalid_input", "no text tower"),  # an image-only model
    ],
)
def test_bad_text_requests_say_what_to_fix(client: TestClient, body, status, error, words):
    response = client.post("/embed/text", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and words in response.json()["detail"]
    assert client.post("/embed/text", json={"texts": ["a bag"]}).status_code == 200


@pytest.fixture
def search_client(clip_artifacts: Path):
    """Index 'clothes' built with 'clip' v1 over three texts' own embeddings; index 'pics' built with 'tiny'."""
    vectors = onnx_text_embeddings(clip_artifacts, ["a sneaker", "a bag", "a dress"])
    VectorIndex.build(np.arange(3), vectors, [{"name": n} for n in ("sneaker", "bag", "dress")],
                      model="clip", model_version="v1").save(clip_artifacts, "clothes")
    VectorIndex.build(np.arange(2), np.eye(2, 16, dtype=np.float32), None, model="tiny", model_version="v1").save(clip_artifacts, "pics")
    with TestClient(create_app(Settings(artifacts_dir=clip_artifacts))) as client:
        yield client


def test_search_by_text_embeds_with_the_index_clip_model(search_client: TestClient):
    response = search_client.post("/search", json={"index": "clothes", "text": "a bag", "k": 3})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert hits[0]["id"] == 1 and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "body, words",
    [
        ({"index": "pics", "text": "a bag"}, "no text tower"),
        ({"index": "clothes", "text": ""}, "empty"),
        ({"index": "clothes", "text": "a bag", "image": base64.b64encode(b"x").decode()}, "exactly one"),
    ],
)
def test_text_search_errors(search_client: TestClient, body, words):
    response = search_client.post("/search", json=body)
    assert response.status_code == 422, response.text
    assert words in str(response.json()["detail"])


# A text encoder imported from sentence-transformers (all-MiniLM-L6-v2), served like a CLIP text tower.

@pytest.fixture(scope="module")
def minilm_client(minilm_artifacts: Path):
    with TestClient(create_app(Settings(artifacts_dir=minilm_artifacts, max_wait_ms=1))) as client:
        yield client


def minilm_embed(client: TestClient, texts: list[str], **body) -> np.ndarray:
    response = client.post("/embed/text", json={"texts": texts, **body})
    assert response.status_code == 200, response.text
    assert (response.json()["model"], response.json()["dim"]) == ("minilm", 384)
    return np.array(response.json()["embeddings"])


def test_an_imported_text_encoder_serves_embed_text_as_its_bundle_computes(minilm_client: TestClient, minilm_artifacts: Path):
    from runtime.encoders.factory import load_encoder
    from runtime.tokens import text_encoder_batch

    texts = ["A man is playing a guitar.", "Someone plays an acoustic guitar on stage.", "Stock markets fell sharply today."]
    got = minilm_embed(minilm_client, texts)  # no model named: the only text model is the default
    bundle = open_bundle(minilm_artifacts, "minilm")
    expected = load_encoder(bundle, role="text_encoder").encode(text_encoder_batch(load_tokenizer(bundle.file("tokenizer")), texts))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    similarity = got @ got.T  # (3, 3)
    assert similarity[0, 1] > 0.5 > similarity[0, 2]  # a pretrained sentence encoder: paraphrases close, topics apart


def test_a_short_text_embeds_the_same_beside_a_long_one(minilm_client: TestClient):
    # the long text sets how many tokens the batch runs on; the short one's padding must not change it
    long = "The committee reviewed the proposal in detail and asked for revisions before the vote. " * 5
    alone = minilm_embed(minilm_client, ["a bag"], model="minilm")
    beside = minilm_embed(minilm_client, [long, "a bag"], model="minilm")
    np.testing.assert_allclose(beside[1], alone[0], atol=1e-5)


def test_a_text_over_the_encoder_s_256_tokens_is_refused(minilm_client: TestClient):
    response = minilm_client.post("/embed/text", json={"texts": ["ok", "word " * 300], "model": "minilm"})
    assert response.status_code == 422 and "256 tokens" in response.json()["detail"] and "text 1" in response.json()["detail"]


def test_a_text_over_the_context_is_refused_saying_truncation_exists(client: TestClient):
    response = client.post("/embed/text", json={"texts": ["a bag " * 30]})
    assert response.status_code == 422
    assert '"truncate": true' in response.json()["detail"] and "EMBEDSERVE_AUTO_TRUNCATE" in response.json()["detail"]


def test_truncate_embeds_a_long_text_by_its_first_tokens(client: TestClient, clip_bundle_artifacts: Path):
    long = "a bag with a long strap " * 10
    response = client.post("/embed/text", json={"texts": [long, "a bag"], "truncate": True})
    assert response.status_code == 200, response.text
    # the tokenizer's own truncation: the first tokens and the end token, as the tower was trained to read
    expected = onnx_text_embeddings(clip_bundle_artifacts, [long, "a bag"])
    np.testing.assert_allclose(response.json()["embeddings"], expected, atol=1e-5)


def test_the_server_setting_truncates_unless_a_request_says_otherwise(clip_bundle_artifacts: Path):
    settings = Settings(artifacts_dir=clip_bundle_artifacts, auto_truncate=True, max_wait_ms=1)
    with TestClient(create_app(settings)) as client:
        assert client.post("/embed/text", json={"texts": ["a bag " * 30]}).status_code == 200
        assert client.post("/embed/text", json={"texts": ["a bag " * 30], "truncate": False}).status_code == 422
