"""The registry when several processes serve one artifacts folder (`embedserve serve --workers N`,
or a CLI beside a server): two apps on one folder stand for two workers here (the live test with
real workers is in test_server.py). A change acknowledged by one is kept whatever the other
writes next and shows in the other's next request; a reload asked of one reaches the other."""

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.vector_index import VectorIndex
from serving.app import create_app
from serving.errors import Conflict
from serving.settings import Settings

DIM = 16  # the tiny model's


def unit(i: int) -> list[float]:
    v = np.zeros(DIM, np.float32)
    v[i % DIM] = 1.0
    return v.tolist()


@pytest.fixture
def workers(image_artifacts: Path):
    """Two apps (two workers) serving one folder, which holds 'tiny' and the vector index 'vecs' of ids 0-3."""
    vectors = np.eye(DIM, dtype=np.float32)[:4]
    VectorIndex.build(np.arange(4), vectors, [{"n": i} for i in range(4)], "flat", None, None).save(image_artifacts, "vecs")
    settings = Settings(artifacts_dir=image_artifacts)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        yield a, b


def count(client: TestClient) -> int:
    [index] = [i for i in client.get("/indexes").json()["indexes"] if i["name"] == "vecs"]
    return index["count"]


def test_writes_through_either_worker_are_all_kept_and_both_see_them(workers):
    a, b = workers
    for n, client in enumerate([a, b] * 5):  # each builds on what the other wrote, never on its own stale copy
        response = client.post("/indexes/vecs/items", json={"items": [{"id": 100 + n, "vector": unit(n), "metadata": {"n": n}}]})
        assert response.status_code == 200, response.text
        assert response.json()["count"] == 5 + n
    assert count(a) == count(b) == 14
    for client in (a, b):
        hits = client.post("/search", json={"index": "vecs", "id": 109, "k": 1}).json()["hits"]
        assert hits[0]["id"] == 109 and hits[0]["metadata"] == {"n": 9}


def test_a_removal_through_one_worker_shows_in_the_others_next_request(workers):
    a, b = workers
    assert a.delete("/indexes/vecs/items/2").status_code == 200
    assert b.post("/search", json={"index": "vecs", "id": 2, "k": 1}).status_code == 404
    response = b.delete("/indexes/vecs/items/2")
    assert response.status_code == 404 and "id 2" in response.json()["detail"]
    assert count(b) == 3


def test_readyz_reports_the_index_version_another_worker_made_current(workers):
    a, b = workers
    response = a.post("/indexes/vecs/items", json={"items": [{"id": 100, "vector": unit(5)}]})
    written = response.json()["version"]
    [index] = [i for i in b.get("/readyz").json()["indexes"] if i["name"] == "vecs"]
    assert index["version"] == written


def test_an_index_another_worker_created_is_served_at_once(workers, image_artifacts: Path):
    a, b = workers
    VectorIndex.build(np.arange(2), np.eye(DIM, dtype=np.float32)[:2], None, "flat", None, None).save(image_artifacts, "later")
    assert b.post("/search", json={"index": "later", "vector": unit(1), "k": 1}).json()["hits"][0]["id"] == 1
    assert "later" in [i["name"] for i in a.get("/indexes").json()["indexes"]]


def test_a_reload_asked_of_one_worker_reaches_the_other(workers, image_artifacts: Path, write_image_bundle):
    a, b = workers
    write_image_bundle(image_artifacts, seed=1)  # tiny v2, made current
    assert a.post("/admin/reload").json()["changed"] == ["model tiny v2"]
    registry = b.app.state.registry
    deadline = time.monotonic() + 10
    while registry.manifests["tiny"].version != "v2":  # b follows a's announcement within about a second
        assert time.monotonic() < deadline, "the other worker did not reload"
        time.sleep(0.05)
    assert b.post("/admin/reload").json()["changed"] == []


def test_a_write_embedded_for_a_model_version_the_index_no_longer_holds_is_a_409(workers):
    a, _ = workers
    registry = a.app.state.registry
    stale = SimpleNamespace(model="tiny", model_version="v0", dim=DIM)  # what a request embedded before a job's swap
    with pytest.raises(Conflict, match="send it again"):
        registry.write_index("vecs", stale, lambda index: pytest.fail("applied to the wrong version"))
    assert count(a) == 4
