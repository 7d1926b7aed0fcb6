import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.vector_index import VectorIndex
from serving.app import create_app
from serving.settings import Settings

DIM = 16


@pytest.fixture
def artifacts(image_artifacts: Path, make_png) -> Path:
    """The 'tiny' model plus index 'pics': five PNGs embedded through /embed/image under ids 100..104."""
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts))) as client:
        files = [("files", (f"{i}.png", make_png(i), "image/png")) for i in range(5)]
        vectors = np.array(client.post("/embed/image", files=files).json()["embeddings"])
    index = VectorIndex.build(np.arange(100, 105), vectors, [{"seed": i} for i in range(5)], model="tiny", model_version="v1")
    index.save(image_artifacts, "pics")
    return image_artifacts


@pytest.fixture
def client(artifacts: Path):
    with TestClient(create_app(Settings(artifacts_dir=artifacts, max_k=20))) as client:
        yield client


def test_search_by_id_finds_the_item_itself_first_with_metadata(client: TestClient):
    response = client.post("/search", json={"id": 102, "k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["index"] == "pics" and body["version"] == "v1" and body["model"] == "tiny"
    assert len(body["hits"]) == 3
    assert body["hits"][0] == {"id": 102, "score": pytest.approx(1.0, abs=1e-5), "metadata": {"seed": 2}}
    assert body["hits"][0]["score"] >= body["hits"][1]["score"] >= body["hits"][2]["score"]


def test_search_by_base64_image_and_by_upload_embeds_with_the_index_model(client: TestClient, make_png):
    response = client.post("/search", json={"index": "pics", "image": base64.b64encode(make_png(4)).decode(), "k": 1})
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["id"] == 104
    upload = client.post("/search/image", files={"file": ("q.png", make_png(1), "image/png")}, data={"k": "2"})
    assert upload.status_code == 200, upload.text
    assert upload.json()["hits"][0]["id"] == 101 and len(upload.json()["hits"]) == 2


def test_search_by_vector_of_the_index_dimension_ranks_by_cosine(client: TestClient, make_png):
    files = [("files", (f"{i}.png", make_png(i), "image/png")) for i in range(5)]
    stored = np.array(client.post("/embed/image", files=files).json()["embeddings"])  # (5, D) unit rows, ids 100..104
    vector = np.zeros(DIM)
    vector[-1] = 2.0  # not unit length: the cosine ignores it
    response = client.post("/search", json={"vector": vector.tolist(), "k": 5})
    assert response.status_code == 200, response.text
    cosines = stored @ (vector / 2.0)  # (5,)
    hits = response.json()["hits"]
    assert [h["id"] for h in hits] == (100 + np.argsort(-cosines)).tolist()
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(cosines)[::-1], atol=1e-5)


def test_k_larger_than_the_index_returns_every_item(client: TestClient):
    response = client.post("/search", json={"id": 100, "k": 20})
    assert response.status_code == 200 and len(response.json()["hits"]) == 5


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({}, 422, "exactly one"),
        ({"id": 100, "vector": [1.0] * DIM}, 422, "exactly one"),
        ({"vector": [1.0] * 3}, 422, f"{DIM}-dimensional"),
        ({"vector": [0.0] * DIM}, 422, "zeros"),
        ({"id": 999}, 404, "999"),
        ({"id": 100, "index": "nope"}, 404, "pics"),
        ({"id": 100, "k": 0}, 422, "k"),
        ({"id": 100, "k": 21}, 422, "20"),
        ({"image": "%%%"}, 422, "base64"),
        ({"image": base64.b64encode(b"not an image").decode()}, 415, "supported format"),
    ],
)
def test_bad_searches_get_their_status_and_the_server_keeps_serving(client: TestClient, body, status, needle):
    response = client.post("/search", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text
    assert client.post("/search", json={"id": 100, "k": 1}).status_code == 200


def test_no_index_loaded_is_404(image_artifacts: Path):
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts))) as client:
        response = client.post("/search", json={"vector": [1.0] * DIM})
    assert response.status_code == 404 and response.json()["error"] == "unknown_index"


def test_an_index_built_with_an_older_model_version_embeds_images_with_that_version(
    artifacts: Path, make_png, write_image_bundle
):
    write_image_bundle(artifacts, "tiny", seed=1)  # v2, other weights, now current
    with TestClient(create_app(Settings(artifacts_dir=artifacts))) as client:
        assert client.post("/embed/image", files={"files": ("q.png", make_png(4), "image/png")}).json()["version"] == "v2"
        response = client.post("/search", json={"image": base64.b64encode(make_png(4)).decode(), "k": 1})
    assert response.status_code == 200 and response.json()["model_version"] == "v1"
    assert response.json()["hits"][0]["id"] == 104
    assert response.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)  # embedded by v1, as indexed


def test_with_several_indexes_the_request_must_name_one(artifacts: Path):
    VectorIndex.build(np.arange(3), np.eye(3, DIM), model="tiny", model_version="v1").save(artifacts, "other")
    with TestClient(create_app(Settings(artifacts_dir=artifacts))) as client:
        unnamed = client.post("/search", json={"id": 1})
        named = client.post("/search", json={"id": 1, "index": "other", "k": 1})
    assert unnamed.status_code == 404 and "other" in unnamed.json()["detail"] and "pics" in unnamed.json()["detail"]
    assert named.status_code == 200 and named.json()["hits"][0]["id"] == 1
