"""The gateway with its encoders on a real Triton server (EMBEDSERVE_TRITON_URL, Settings.triton_url):
the same answers as with onnxruntime in process, and a 503 with the reason once Triton is gone.

The server is the tritonserver binary nvidia-pytriton carries (tests/triton_server.py), serving
the repository `embedserve export --triton --triton-backend python` writes.
"""

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from export.triton import write_triton_repository
from runtime.bundle import open_bundle
from serving.app import create_app
from serving.settings import Settings
from tests.triton_server import TritonServer

pytest.importorskip("tritonclient.http")

# small images, and one large enough for the reduced decode of big images
IMAGE_SIZES = [(12, 10), (9, 30), (160, 120)]


def triton_repository(artifacts: Path, names: list[str], folder: Path) -> Path:
    for name in names:
        write_triton_repository(open_bundle(artifacts, name), folder, onnx_backend="python")
    return folder


@pytest.fixture(scope="module")
def triton(clip_bundle_artifacts: Path, tmp_path_factory) -> TritonServer:
    repository = triton_repository(clip_bundle_artifacts, ["tiny", "clip"], tmp_path_factory.mktemp("triton-repository"))
    # what the gateway calls: the ONNX models (it preprocesses and tokenises itself)
    server = TritonServer(repository, ["tiny", "clip_image_encoder", "clip_text_encoder"], tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clients(triton, clip_bundle_artifacts: Path):
    """(in process, on Triton): two gateways over the same bundles."""
    settings = dict(artifacts_dir=clip_bundle_artifacts, max_wait_ms=1)
    with TestClient(create_app(Settings(**settings))) as local, \
            TestClient(create_app(Settings(**settings, triton_url=triton.url))) as remote:
        yield local, remote


def embed_images(client: TestClient, blobs: list[bytes], model: str):
    return client.post("/embed/image", files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)],
                       params={"model": model})


def test_every_model_is_ready_on_triton(clients):
    _, remote = clients
    response = remote.get("/readyz")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("model", ["tiny", "clip"])
def test_images_embed_on_triton_as_in_process(clients, make_png, model):
    local, remote = clients
    blobs = [make_png(seed, size) for seed, size in enumerate(IMAGE_SIZES)]
    answers = [embed_images(client, blobs, model) for client in (local, remote)]
    for answer in answers:
        assert answer.status_code == 200, answer.text
    here, there = (a.json() for a in answers)
    assert (there["model"], there["version"], there["dim"]) == (here["model"], here["version"], here["dim"])
    np.testing.assert_allclose(there["embeddings"], here["embeddings"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(there["embeddings"][0], there["embeddings"][1])  # each image really ran


def test_texts_embed_on_triton_as_in_process(clients):
    local, remote = clients
    body = {"texts": ["a sneaker", "a bag", "une robe"], "model": "clip"}
    answers = [client.post("/embed/text", json=body) for client in (local, remote)]
    for answer in answers:
        assert answer.status_code == 200, answer.text
    here, there = (a.json() for a in answers)
    np.testing.assert_allclose(there["embeddings"], here["embeddings"], rtol=1e-5, atol=1e-5)


def test_a_stopped_triton_answers_503_with_the_reason(image_artifacts: Path, tmp_path: Path, make_png):
    # a server of its own, to stop: the gateway started (and served) while it was up
    server = TritonServer(triton_repository(image_artifacts, ["tiny"], tmp_path / "repository"), ["tiny"], tmp_path)
    try:
        client = TestClient(create_app(Settings(artifacts_dir=image_artifacts, max_wait_ms=1, triton_url=server.url)))
        with client:
            assert embed_images(client, [make_png(0)], "tiny").status_code == 200
            server.stop()
            response = embed_images(client, [make_png(0)], "tiny")
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "not_ready"
            assert f"cannot reach Triton at {server.url}" in response.json()["detail"]
    finally:
        server.stop()


def test_a_triton_unreachable_at_startup_answers_503_with_the_reason(image_artifacts: Path, make_png):
    settings = Settings(artifacts_dir=image_artifacts, triton_url="127.0.0.1:9")  # nothing listens there
    with TestClient(create_app(settings)) as client:
        response = embed_images(client, [make_png(0)], "tiny")
        assert response.status_code == 503, response.text
        assert "cannot reach Triton at 127.0.0.1:9" in response.json()["detail"]
        assert client.get("/readyz").status_code == 503
