"""The server on the Milvus backend (EMBEDSERVE_INDEX_BACKEND=milvus, a real Milvus Lite file):
a job writes a version and it is served through the same routes as a FAISS index; a second job
moves the alias and the server swaps to it; items added and removed over HTTP; a metadata filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from index.milvus_index import alias_for
from serving.app import create_app
from serving.settings import Settings
from tests import images
from tests.jobs.driving import wait_for_job


def write_pngs(folder: Path, count: int, seed: int) -> Path:
    return images.write_pngs(folder, count, seed=seed, size=(9, 9))


def run(client: TestClient, spec: dict) -> dict:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["id"])


def test_jobs_items_and_search_on_milvus(image_artifacts: Path, tmp_path: Path, make_png):
    data = tmp_path / "data"
    settings = Settings(artifacts_dir=image_artifacts, data_roots=str(data), index_backend="milvus",
                        milvus_uri=str(tmp_path / "milvus.db"), max_k=50)
    with TestClient(create_app(settings)) as client:
        first = run(client, {"source": str(write_pngs(data / "a", 12, seed=1)), "model": "tiny", "index": "my-pics"})
        assert (first["state"], first["index_version"]) == ("succeeded", "v1"), first
        listed = client.get("/indexes").json()["indexes"]
        assert [(i["name"], i["version"], i["count"], i["kind"]) for i in listed] == [("my-pics", "v1", 12, "flat")]
        assert not (image_artifacts / "indexes").exists()  # nothing of it on disk: Milvus holds it all

        hits = client.post("/search", json={"index": "my-pics", "id": 3, "k": 2}).json()["hits"]
        assert hits[0]["id"] == 3 and hits[0]["metadata"]["path"].endswith("003.png")

        # a second job writes v2 into a new collection; the alias moves and the server serves it
        second = run(client, {"source": str(write_pngs(data / "b", 7, seed=2)), "model": "tiny", "index": "my-pics"})
        assert second["index_version"] == "v2"
        body = client.post("/search", json={"index": "my-pics", "id": 3, "k": 50}).json()
        assert body["version"] == "v2" and len(body["hits"]) == 7
        registry = client.app.state.registry
        assert registry.index_store.client.describe_alias(alias_for("my-pics"))["collection_name"].endswith("__v2")

        # items over HTTP, written in place (the version stays), and a filter on their metadata
        vector = np.eye(16)[0].tolist()
        added = client.post("/indexes/my-pics/items", json={"items": [
            {"id": 1000, "vector": vector, "metadata": {"colour": "red"}},
            {"id": 1001, "vector": vector, "metadata": {"colour": "blue"}}]})
        assert added.status_code == 200, added.text
        assert (added.json()["version"], added.json()["count"]) == ("v2", 9)
        filtered = client.post("/search", json={"index": "my-pics", "vector": vector, "k": 5, "where": {"colour": "blue"}})
        assert [h["id"] for h in filtered.json()["hits"]] == [1001]
        assert client.delete("/indexes/my-pics/items/1001").json()["count"] == 8
        assert client.post("/search", json={"index": "my-pics", "vector": vector, "k": 5,
                                            "where": {"colour": "blue"}}).json()["hits"] == []
        bad = client.post("/search", json={"index": "my-pics", "vector": vector, "where": {"a b": 1}})
        assert bad.status_code == 422, bad.text

    # a restarted server finds the current version through the alias
    with TestClient(create_app(settings)) as client:
        body = client.post("/search", json={"index": "my-pics", "id": 1000, "k": 1}).json()
        assert (body["version"], body["hits"][0]["metadata"]) == ("v2", {"colour": "red"})
