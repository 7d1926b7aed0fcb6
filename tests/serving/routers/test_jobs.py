import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.build import build_image_index
from runtime.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT
from serving.app import create_app
from serving.settings import Settings
from tests import images
from tests.jobs.driving import wait_for_job

needs_fashion_mnist = pytest.mark.skipif(not any(DEFAULT_FASHION_MNIST_ROOT.glob("t10k-images-idx3-ubyte*")),
                                         reason="the Debian package dataset-fashion-mnist is not installed")


def write_pngs(folder: Path, count: int) -> Path:
    return images.write_pngs(folder, count, seed=1, size=(9, 9))


def test_a_job_through_http_is_served_as_soon_as_it_succeeds(image_artifacts: Path, tmp_path: Path):
    folder = write_pngs(tmp_path / "data" / "pics", 12)
    settings = Settings(artifacts_dir=image_artifacts, data_roots=str(tmp_path / "data"))
    with TestClient(create_app(settings)) as client:
        response = client.post("/jobs", json={"source": str(folder), "model": "tiny", "index": "pics", "batch_size": 5})
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["state"] == "queued" and response.headers["location"] == f"/jobs/{job['id']}"
        status = wait_for_job(client, job["id"])
        assert (status["state"], status["done"], status["total"], status["index_version"]) == ("succeeded", 12, 12, "v1")
        assert [j["id"] for j in client.get("/jobs").json()["jobs"]] == [job["id"]]
        (listed,) = client.get("/indexes").json()["indexes"]
        assert (listed["name"], listed["version"], listed["model"], listed["model_version"], listed["count"]) == \
               ("pics", "v1", "tiny", "v1", 12)
        hits = client.post("/search", json={"index": "pics", "id": 3, "k": 1}).json()["hits"]
        assert hits[0]["id"] == 3 and hits[0]["metadata"]["path"] == "003.png"


@pytest.mark.parametrize("source", ["{outside}", "{allowed}/../outside", "{allowed}/link", "/etc"])
def test_a_source_outside_the_data_roots_is_a_403_and_reads_nothing(image_artifacts: Path, tmp_path: Path, source: str):
    allowed, outside = write_pngs(tmp_path / "allowed", 1), write_pngs(tmp_path / "outside", 1)
    (allowed / "link").symlink_to(outside)
    settings = Settings(artifacts_dir=image_artifacts, data_roots=str(allowed))
    with TestClient(create_app(settings)) as client:
        body = {"source": source.format(allowed=allowed, outside=outside), "model": "tiny", "index": "x"}
        response = client.post("/jobs", json=body)
        assert response.status_code == 403 and response.json()["error"] == "forbidden", response.text
        assert "outside the folders this server may read" in response.json()["detail"]
        assert client.get("/jobs").json()["jobs"] == []


def test_no_data_roots_allows_only_data_sets_and_indexes(image_artifacts: Path, tmp_path: Path):
    folder = write_pngs(tmp_path / "pics", 1)
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts))) as client:
        assert client.post("/jobs", json={"source": str(folder), "model": "tiny", "index": "x"}).status_code == 403
        assert client.post("/jobs", json={"source": "fashion-mnist:tst", "model": "tiny", "index": "x"}).status_code == 422
        assert client.post("/jobs", json={"source": "fashion-mnist:test", "model": "nope", "index": "x"}).status_code == 404
        assert client.post("/jobs", json={"source": "index:nope", "model": "tiny", "index": "x"}).status_code == 404
        assert client.get("/jobs/abc").status_code == 404 and client.delete("/jobs/abc").status_code == 404


@needs_fashion_mnist
def test_searches_succeed_while_a_job_runs_and_its_index_is_promoted(image_artifacts: Path, write_image_bundle):
    build_image_index(image_artifacts, "fm", "tiny", "fashion-mnist:test", limit=2000, progress=False)
    write_image_bundle(image_artifacts, "tiny", seed=3)  # tiny v2: the job re-embeds the index with it
    query = np.ones(16, np.float32).tolist()
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts))) as client:
        before = client.post("/search", json={"index": "fm", "vector": query, "k": 3}).json()
        assert (before["version"], before["model_version"]) == ("v1", "v1")
        failures, answers, stop = [], [], threading.Event()

        def search():
            while not stop.is_set():
                body = client.post("/search", json={"index": "fm", "id": 7, "k": 3})
                if body.status_code != 200:
                    failures.append(body.text)
                else:
                    answers.append((body.json()["version"], body.json()["model_version"]))

        threads = [threading.Thread(target=search) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            job = client.post("/jobs", json={"source": "index:fm", "model": "tiny", "index": "fm", "batch_size": 100}).json()
            status = wait_for_job(client, job["id"])
            time.sleep(0.3)  # searches against the promoted index
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert status["state"] == "succeeded" and status["index_version"] == "v2", status
        assert not failures and answers
        assert set(answers) <= {("v1", "v1"), ("v2", "v2")} and answers[-1] == ("v2", "v2")  # never a mix
        after = client.post("/search", json={"index": "fm", "vector": query, "k": 3}).json()
        assert (after["version"], after["model_version"]) == ("v2", "v2")


def test_cancel_over_http(image_artifacts: Path, tmp_path: Path):
    folder = write_pngs(tmp_path / "data", 40)
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts, data_roots=str(tmp_path / "data")))) as client:
        runner = client.app.state.jobs
        gate = threading.Event()
        real = runner._run_job

        def held(*args):  # the job waits until the test has asked for the cancel
            gate.wait(10)
            return real(*args)

        runner._run_job = held
        job = client.post("/jobs", json={"source": str(folder), "model": "tiny", "index": "pics", "batch_size": 5}).json()
        cancelled = client.delete(f"/jobs/{job['id']}").json()
        gate.set()
        assert cancelled["state"] == "cancelled" or cancelled["cancel_requested"]  # at once if queued, else after a batch
        assert wait_for_job(client, job["id"])["state"] == "cancelled"
        assert client.get("/indexes").json()["indexes"] == []  # nothing was published


def test_reload_serves_a_new_model_version_without_a_restart(image_artifacts: Path, write_image_bundle, make_png):
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts))) as client:
        def embed():
            return client.post("/embed/image", files=[("files", ("a.png", make_png(0), "image/png"))]).json()

        first = embed()
        write_image_bundle(image_artifacts, "tiny", seed=9)  # v2 becomes current on disk
        assert embed()["version"] == "v1"  # not served until a reload
        reload = client.post("/admin/reload").json()
        assert reload["changed"] == ["model tiny v2"] and reload["retired"] == ["tiny v1"]
        second = embed()
        assert second["version"] == "v2" and not np.allclose(first["embeddings"], second["embeddings"])
        assert [(m["name"], m["version"]) for m in client.get("/readyz").json()["models"]] == [("tiny", "v2")]
        assert client.post("/admin/reload").json() == {"changed": [], "retired": []}


def test_added_and_removed_items_are_searchable_at_once_and_survive_a_restart(image_artifacts: Path, make_png):
    import base64

    build_image_index(image_artifacts, "pics", "tiny", write_pngs(image_artifacts.parent / "pics", 3), progress=False)
    settings = Settings(artifacts_dir=image_artifacts)
    vector = np.eye(16, dtype=np.float32)[4].tolist()
    with TestClient(create_app(settings)) as client:
        response = client.post("/indexes/pics/items", json={"items": [
            {"id": 100, "vector": vector, "metadata": {"note": "added"}},
            {"id": 101, "image": base64.b64encode(make_png(3)).decode()},
        ]})
        assert response.status_code == 200, response.text
        assert response.json() == {"index": "pics", "version": "v2", "added": 2, "count": 5}
        hit = client.post("/search", json={"index": "pics", "vector": vector, "k": 1}).json()["hits"][0]
        assert hit["id"] == 100 and hit["metadata"] == {"note": "added"}
        assert client.post("/indexes/pics/items", json={"items": [{"id": 100, "vector": vector}]}).status_code == 422
        assert client.post("/indexes/pics/items", json={"items": [{"id": 7, "vector": [1.0]}]}).status_code == 422
        assert client.post("/indexes/nope/items", json={"items": [{"id": 7, "vector": vector}]}).status_code == 404
    with TestClient(create_app(settings)) as client:  # a restart: the acknowledged change is on disk
        assert client.post("/search", json={"index": "pics", "id": 101, "k": 1}).json()["hits"][0]["id"] == 101
        assert client.delete("/indexes/pics/items/100").json()["count"] == 4
        assert client.delete("/indexes/pics/items/100").status_code == 404
    with TestClient(create_app(settings)) as client:
        ids = [h["id"] for h in client.post("/search", json={"index": "pics", "vector": vector, "k": 10}).json()["hits"]]
        assert 100 not in ids and sorted(ids) == [0, 1, 2, 101]


def test_a_job_left_unfinished_by_a_crash_resumes_when_the_server_starts(image_artifacts: Path, tmp_path: Path):
    from jobs.store import JobSpec, JobStore

    folder = write_pngs(tmp_path / "data", 8)
    store = JobStore(image_artifacts)
    job = store.create(JobSpec(source=str(folder), model="tiny", index="pics", batch_size=3))
    store.update(job.id, state="running")  # what a killed server leaves behind
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts, data_roots=str(tmp_path / "data")))) as client:
        status = wait_for_job(client, job.id)
        assert (status["state"], status["done"]) == ("succeeded", 8)
        assert client.post("/search", json={"index": "pics", "id": 2, "k": 1}).json()["hits"][0]["id"] == 2


def test_a_job_another_worker_runs_is_left_to_it(image_artifacts: Path, tmp_path: Path):
    """Two workers on one folder both find an unfinished job at start-up: the one holding its lock
    runs it, the other leaves it alone (not a second run writing the same shards)."""
    from jobs.run import claim
    from jobs.store import JobSpec, JobStore

    folder = write_pngs(tmp_path / "data", 8)
    store = JobStore(image_artifacts)
    job = store.create(JobSpec(source=str(folder), model="tiny", index="pics", batch_size=3))
    store.update(job.id, state="running")  # left by a killed server
    settings = Settings(artifacts_dir=image_artifacts, data_roots=str(tmp_path / "data"))
    with claim(image_artifacts, job.id):  # the other worker has it
        with TestClient(create_app(settings)) as client:
            time.sleep(0.5)
            status = client.get(f"/jobs/{job.id}").json()
            assert (status["state"], status["done"]) == ("running", 0)
            assert not (store.folder / job.id).exists()  # no shard written here
    with TestClient(create_app(settings)) as client:  # the lock free again: a start resumes it
        assert wait_for_job(client, job.id)["state"] == "succeeded"


def test_past_the_queue_limit_a_job_is_refused_429_and_jobs_says_how_many_wait(image_artifacts: Path, monkeypatch):
    from serving.job_worker import JobRunner

    release = threading.Event()
    monkeypatch.setattr(JobRunner, "_run_job", lambda self, job_id, loop: release.wait(60))  # every job stays queued
    spec = {"source": "fashion-mnist:test", "model": "tiny", "index": "pics"}
    try:
        with TestClient(create_app(Settings(artifacts_dir=image_artifacts, max_queued_jobs=2))) as client:
            assert [client.post("/jobs", json=spec).status_code for _ in range(2)] == [202, 202]
            refused = client.post("/jobs", json=spec)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
            assert "EMBEDSERVE_MAX_QUEUED_JOBS" in refused.json()["detail"]
            listed = client.get("/jobs").json()
            assert (listed["waiting"], listed["max_waiting"], len(listed["jobs"])) == (2, 2, 2)
            release.set()
    finally:
        release.set()


def test_a_jobs_error_texts_do_not_show_the_servers_folders(image_artifacts: Path, tmp_path: Path):
    from jobs.store import JobSpec, JobStore

    store = JobStore(image_artifacts)
    job = store.create(JobSpec(source="fashion-mnist:test", model="tiny", index="pics"))
    store.update(job.id, state="failed", error=f"BundleError: bundle {image_artifacts.resolve()}/models/tiny/v1: broken")
    store.record_errors(job.id, {3: f"{tmp_path.resolve()}/data/x.png: not an image"})
    settings = Settings(artifacts_dir=image_artifacts, data_roots=str(tmp_path / "data"))
    with TestClient(create_app(settings)) as client:
        shown = client.get(f"/jobs/{job.id}").json()
        assert shown["error"] == "BundleError: bundle artifacts/models/tiny/v1: broken"
        assert shown["errors"] == [{"position": 3, "error": f"{tmp_path.resolve()}/data/x.png: not an image"
                                    .replace(str((tmp_path / 'data').resolve()), "a data root")}]
        assert str(image_artifacts.resolve()) not in client.get("/jobs").text
