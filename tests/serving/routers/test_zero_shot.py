import base64
import json
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from runtime.bundle import open_bundle
from export.clip import export_clip
from runtime.templates import EVAL_TEMPLATES
from runtime.tokens import encode_batch, load_tokenizer
from index.zero_shot import build_class_matrix
from serving.app import create_app
from runtime.preprocessing import decode_image, preprocess_batch
from serving.settings import Settings

CLASSES = ["a sneaker", "a bag", "a dress", "an ankle boot"]


@pytest.fixture(scope="module")
def client(clip_bundle_artifacts: Path):
    settings = Settings(artifacts_dir=clip_bundle_artifacts, max_classes=5, max_images_per_request=3, max_wait_ms=1)
    with TestClient(create_app(settings)) as client:
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expected_ranking(artifacts: Path, images: list[bytes], classes: list[str], templates=EVAL_TEMPLATES,
                     normalization: str = "querybank", model: str = "clip"):
    """Zero-shot computed independently of the server: onnxruntime sessions, the bundle's tokenizer,
    index.zero_shot.build_class_matrix and, for querybank, offsets from the bundle's query_bank.npy.
    Returns (cosines (B, C), scores (B, C): cosines less the offsets, probabilities (B, C))."""
    bundle = open_bundle(artifacts, model)
    text = ort.InferenceSession(str(bundle.file("text_encoder")), providers=["CPUExecutionProvider"])
    image = ort.InferenceSession(str(bundle.file("image_encoder")), providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(bundle.file("tokenizer"))

    def encode_texts(prompts):
        ids, mask = encode_batch(tokenizer, prompts)
        return text.run(None, {"ids": ids, "attention_mask": mask})[0]

    matrix = build_class_matrix(encode_texts, classes, templates)  # (C, D)
    batch = preprocess_batch([decode_image(b) for b in images], bundle.manifest.preprocessing)
    embeddings = image.run(None, {"images": batch})[0]
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)  # (B, D)
    cosines = embeddings @ matrix.T  # (B, C)
    offsets = 0.0
    if normalization == "querybank":
        bank_cosines = np.load(bundle.file("query_bank")) @ matrix.T  # (N, C)
        offsets = np.sort(bank_cosines, axis=0)[-bundle.manifest.query_bank.k:].mean(axis=0)  # (C,)
    logits = bundle.manifest.logit_scale * (cosines - offsets)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    return cosines, cosines - offsets, probabilities / probabilities.sum(1, keepdims=True)


def check_against_expected(body: dict, artifacts: Path, images: list[bytes], classes: list[str], templates=EVAL_TEMPLATES,
                           normalization: str = "querybank"):
    cosines, scores, probabilities = expected_ranking(artifacts, images, classes, templates, normalization, body["model"])
    assert body["normalization"] == normalization
    assert len(body["results"]) == len(images)
    for row, result in enumerate(body["results"]):
        labels = result["labels"]
        assert sorted(label["label"] for label in labels) == sorted(classes)
        assert sum(label["probability"] for label in labels) == pytest.approx(1.0, abs=1e-5)
        assert [label["label"] for label in labels] == [classes[c] for c in np.argsort(-probabilities[row], kind="stable")]
        for label in labels:
            c = classes.index(label["label"])
            assert label["cosine"] == pytest.approx(cosines[row, c], abs=1e-4)
            assert label["score"] == pytest.approx(scores[row, c], abs=1e-4)
            assert label["probability"] == pytest.approx(probabilities[row, c], abs=1e-4)
        assert [label["score"] for label in labels] == sorted((label["score"] for label in labels), reverse=True)


def test_json_request_ranks_classes_as_clip_does(client: TestClient, clip_bundle_artifacts: Path, make_png):
    images = [make_png(0), make_png(1, size=(28, 28))]
    response = client.post("/zero-shot", json={"images": [b64(b) for b in images], "classes": CLASSES})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["templates"]) == ("clip", "v1", list(EVAL_TEMPLATES))
    check_against_expected(body, clip_bundle_artifacts, images, CLASSES)


def test_querybank_is_the_default_and_none_gives_plain_clip(client: TestClient, clip_bundle_artifacts: Path, make_png):
    images = [make_png(5), make_png(6, size=(28, 28))]
    request = {"images": [b64(b) for b in images], "classes": CLASSES}
    default = client.post("/zero-shot", json=request).json()
    plain = client.post("/zero-shot", json={**request, "normalization": "none"}).json()
    explicit = client.post("/zero-shot", json={**request, "normalization": "querybank"}).json()
    check_against_expected(default, clip_bundle_artifacts, images, CLASSES, normalization="querybank")
    check_against_expected(plain, clip_bundle_artifacts, images, CLASSES, normalization="none")
    assert explicit == default
    probabilities = [[label["probability"] for label in sorted(r["labels"], key=lambda l: l["label"])]
                     for body in (default, plain) for r in body["results"]]
    assert not np.allclose(probabilities[:2], probabilities[2:], atol=1e-3)  # the offsets really move them
    multipart = client.post("/zero-shot", files=[("files", ("a.png", images[0], "image/png"))],
                            data={"classes": CLASSES, "normalization": "none"})
    check_against_expected(multipart.json(), clip_bundle_artifacts, images[:1], CLASSES, normalization="none")


def test_a_model_without_a_query_bank_serves_plain_and_refuses_querybank(clip_artifacts: Path, clip_checkpoint: Path,
                                                                         make_png):
    export_clip(clip_checkpoint, clip_artifacts, "clip-plain", query_bank_images=0, int8=False, fp16=False)  # fp32 served
    images = [make_png(7)]
    request = {"images": [b64(b) for b in images], "classes": CLASSES, "model": "clip-plain"}
    with TestClient(create_app(Settings(artifacts_dir=clip_artifacts))) as client:
        default = client.post("/zero-shot", json=request)
        assert default.status_code == 200, default.text
        check_against_expected(default.json(), clip_artifacts, images, CLASSES, normalization="none")
        refused = client.post("/zero-shot", json={**request, "normalization": "querybank"})
        assert refused.status_code == 422 and refused.json()["error"] == "invalid_input"
        assert "has no query bank" in refused.json()["detail"] and '"none"' in refused.json()["detail"]


def test_the_server_default_can_be_none(clip_bundle_artifacts: Path, make_png):
    with TestClient(create_app(Settings(artifacts_dir=clip_bundle_artifacts, zero_shot_normalization="none"))) as client:
        body = client.post("/zero-shot", json={"images": [b64(make_png(8))], "classes": CLASSES}).json()
    check_against_expected(body, clip_bundle_artifacts, [make_png(8)], CLASSES, normalization="none")


def test_custom_templates_are_used(client: TestClient, clip_bundle_artifacts: Path, make_png):
    templates = ["a photo of a {}.", "{}"]
    response = client.post("/zero-shot", json={"images": [b64(make_png(2))], "classes": CLASSES, "templates": templates})
    assert response.status_code == 200, response.text
    assert response.json()["templates"] == templates
    check_against_expected(response.json(), clip_bundle_artifacts, [make_png(2)], CLASSES, templates)


def test_multipart_with_a_json_list_or_repeated_fields_matches_json(client: TestClient, make_png):
    files = [("files", ("a.png", make_png(3), "image/png"))]
    as_json = client.post("/zero-shot", json={"images": [b64(make_png(3))], "classes": CLASSES}).json()["results"]
    listed = client.post("/zero-shot", files=files, data={"classes": json.dumps(CLASSES)})
    repeated = client.post("/zero-shot", files=files, data={"classes": CLASSES, "model": "clip"})
    assert listed.status_code == 200 and repeated.status_code == 200, (listed.text, repeated.text)
    assert listed.json()["results"] == repeated.json()["results"]
    np.testing.assert_allclose([l["probability"] for l in listed.json()["results"][0]["labels"]],
                               [l["probability"] for l in as_json[0]["labels"]], atol=1e-6)


def test_a_repeated_class_list_reuses_its_cached_class_matrix(clip_artifacts: Path, make_png):
    with TestClient(create_app(Settings(artifacts_dir=clip_artifacts))) as client:
        registry = client.app.state.registry
        request = {"images": [b64(make_png(4))], "classes": CLASSES}
        first = client.post("/zero-shot", json=request).json()
        second = client.post("/zero-shot", json={**request, "classes": [f" {c}" for c in CLASSES]}).json()  # stripped: same key
        assert first == second and len(registry.class_matrices) == 1
        assert client.post("/zero-shot", json={**request, "templates": ["{}"]}).status_code == 200
        assert len(registry.class_matrices) == 2


def test_a_cache_miss_awaits_the_text_batcher_on_the_event_loop(clip_artifacts: Path, make_png, monkeypatch):
    # the prompts reach the text tower's batcher from the event loop itself: no worker thread that
    # blocks on a call back into the loop (with many misses at once, those threads run out)
    import anyio.from_thread

    def no_hop(*args, **kwargs):
        raise AssertionError("a worker thread called back into the event loop")

    monkeypatch.setattr(anyio.from_thread, "run", no_hop)
    with TestClient(create_app(Settings(artifacts_dir=clip_artifacts))) as client:
        registry = client.app.state.registry
        batcher = registry.text_model("clip").batcher
        submit, threads = batcher.submit, []

        async def recording_submit(items):
            threads.append(threading.current_thread().name)
            return await submit(items)

        batcher.submit = recording_submit
        response = client.post("/zero-shot", json={"images": [b64(make_png(4))], "classes": CLASSES})
        assert response.status_code == 200, response.text
        assert threads == [registry_loop_thread(client)]


def registry_loop_thread(client: TestClient) -> str:
    """The name of the thread the app's event loop runs on (TestClient runs it in a thread of its own)."""
    return client.portal.call(lambda: threading.current_thread().name)


@pytest.mark.parametrize(
    "body, status, error, words",
    [
        ({"classes": []}, 422, "invalid_input", "no classes"),
        ({"classes": ["a bag"]}, 422, "invalid_input", "one class"),
        ({"classes": ["a bag", " A Bag "]}, 422, "invalid_input", "same class"),
        ({"classes": ["a bag", "   "]}, 422, "invalid_input", "class 1 is empty"),
        ({"classes": ["a bag", "a bag " * 15]}, 422, "invalid_input", "24 tokens"),  # the context length
        ({"classes": CLASSES, "templates": ["a photo"]}, 422, "invalid_input", "exactly one '{}'"),
        ({"classes": CLASSES, "templates": ["{} and {}"]}, 422, "invalid_input", "exactly one '{}'"),
        ({"classes": CLASSES, "templates": ["a {0}"]}, 422, "invalid_input", "exactly one '{}'"),
        ({"classes": CLASSES, "templates": []}, 422, "invalid_input", "templates is empty"),
        ({"classes": ["a", "b", "c", "d", "e", "f"]}, 413, "payload_too_large", "limit is 5"),
        ({"classes": CLASSES, "model": "nope"}, 404, "unknown_model", "clip"),
        ({"classes": CLASSES, "model": "tiny"}, 422, "invalid_input", "no text tower"),
        ({"classes": CLASSES, "normalization": "csls"}, 422, "invalid_input", "'querybank' or 'none'"),
        ({"classes": CLASSES, "normalization": "QueryBank"}, 422, "invalid_input", "'querybank' or 'none'"),
        ({"classes": CLASSES, "images": []}, 422, "invalid_input", "no images"),
        ({"classes": CLASSES, "images": ["not base64!"]}, 422, "invalid_input", "base64"),
        ({"classes": CLASSES, "images": [b64(b"plain text")]}, 415, "unsupported_media_type", "supported format"),
        ({"classes": CLASSES, "images": ["aGVsbG8="] * 4}, 413, "payload_too_large", "limit is 3"),
        ({"images": ["aGVsbG8="]}, 422, "invalid_input", "classes"),  # no classes field at all
    ],
)
def test_bad_requests_say_what_to_fix_and_the_server_keeps_serving(client: TestClient, make_png, body, status, error, words):
    body = {"images": [b64(make_png(0))], **body}
    response = client.post("/zero-shot", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and words in response.json()["detail"], response.json()
    assert client.post("/zero-shot", json={"images": [b64(make_png(0))], "classes": CLASSES}).status_code == 200


def test_multipart_errors(client: TestClient, make_png):
    files = [("files", ("a.png", make_png(0), "image/png"))]
    bad_list = client.post("/zero-shot", files=files, data={"classes": '["a bag", '})
    assert bad_list.status_code == 422 and "JSON list" in bad_list.json()["detail"]
    no_classes = client.post("/zero-shot", files=files)
    assert no_classes.status_code == 422 and "no classes" in no_classes.json()["detail"]
    no_files = client.post("/zero-shot", files=[("other", ("a.png", b"x", "image/png"))], data={"classes": CLASSES})
    assert no_files.status_code == 422 and "no images" in no_files.json()["detail"]
    bad_normalization = client.post("/zero-shot", files=files, data={"classes": CLASSES, "normalization": "zscore"})
    assert bad_normalization.status_code == 422 and "'querybank' or 'none'" in bad_normalization.json()["detail"]
    text = client.post("/zero-shot", content=b"hi", headers={"content-type": "text/plain"})
    assert text.status_code == 415


@pytest.fixture(scope="module")
def minilm_client(minilm_artifacts: Path):
    with TestClient(create_app(Settings(artifacts_dir=minilm_artifacts, max_wait_ms=1))) as client:
        yield client


def test_a_text_encoder_is_refused_for_zero_shot_and_images(minilm_client: TestClient, make_png):
    files = [("files", ("a.png", make_png(0), "image/png"))]
    response = minilm_client.post("/zero-shot", params={"model": "minilm"}, files=files, data={"classes": ["a bag", "a shoe"]})
    assert response.status_code == 422 and "no image tower" in response.json()["detail"]
    response = minilm_client.post("/embed/image", params={"model": "minilm"}, files=files)
    assert response.status_code == 422 and "texts only" in response.json()["detail"]


def test_a_large_class_matrix_shares_the_text_tower_with_other_requests(clip_artifacts: Path, make_png):
    # 200 prompts go to the tower a batch at a time: a text request that arrives meanwhile is
    # computed after at most a batch or two of them, not after all 25
    settings = Settings(artifacts_dir=clip_artifacts, max_batch_size=8, max_classes=200)
    with TestClient(create_app(settings)) as client:
        encoder = client.app.state.registry.text_model("clip").batcher.encoder
        encode, batches, first_batch = encoder.encode, [], threading.Event()

        def recording_encode(rows):
            batches.append(len(rows))
            first_batch.set()
            threading.Event().wait(0.01)  # a tower slow enough for the other request to arrive mid-way
            return encode(rows)

        encoder.encode = recording_encode
        classes = [f"class number {i}" for i in range(200)]
        big = threading.Thread(target=lambda: answers.append(client.post(
            "/zero-shot", json={"images": [b64(make_png(1))], "classes": classes, "templates": ["a photo of {}."]})))
        answers = []
        big.start()
        assert first_batch.wait(timeout=60)
        small = client.post("/embed/text", json={"texts": ["a bag"], "model": "clip"})
        big.join(timeout=120)
    assert small.status_code == 200 and answers[0].status_code == 200, (small.text, answers[0].text)
    assert sorted(batches) == [1] + [8] * 25  # each prompt once, the text request on its own
    assert batches.index(1) < len(batches) - 1, batches  # ...before the matrix's last batch


def test_classes_times_templates_over_the_limit_is_a_413(clip_artifacts: Path, make_png):
    with TestClient(create_app(Settings(artifacts_dir=clip_artifacts, max_prompts=10))) as client:
        body = {"images": [b64(make_png(1))], "classes": CLASSES, "templates": ["a {}.", "the {}.", "one {}."]}
        response = client.post("/zero-shot", json=body)
        assert response.status_code == 413 and "EMBEDSERVE_MAX_PROMPTS" in response.json()["detail"]
        assert client.post("/zero-shot", json={**body, "templates": ["a {}.", "the {}."]}).status_code == 200


def test_a_prompt_over_the_context_is_refused_unless_the_server_truncates(clip_bundle_artifacts: Path, make_png):
    body = {"images": [b64(make_png(0))], "classes": ["a bag " * 30, "a dress"], "templates": ["{}"]}
    with TestClient(create_app(Settings(artifacts_dir=clip_bundle_artifacts, max_wait_ms=1))) as client:
        refused = client.post("/zero-shot", json=body)
        assert refused.status_code == 422 and "EMBEDSERVE_AUTO_TRUNCATE" in refused.json()["detail"]
    with TestClient(create_app(Settings(artifacts_dir=clip_bundle_artifacts, auto_truncate=True, max_wait_ms=1))) as client:
        assert client.post("/zero-shot", json=body).status_code == 200
