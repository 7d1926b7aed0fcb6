"""Jobs on a local Ray (2 CPUs, started once for the module): the same shards and index as the
local runner, and cancel and resume between shards as for a local job."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from index.vector_index import open_index
import jobs.ray_runner
from jobs.ray_runner import RayConfig
from jobs.run import run_job
from jobs.shards import read_shard, write_shard
from jobs.store import JobSpec, JobStore
from tests.jobs.driving import cancel_at_check

RAY = RayConfig(address="local", replicas=2, cpus_per_replica=1)
IMAGES, CORRUPT = 300, (7, 151)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray reading its own old settings


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One in-process Ray for the module; the jobs' `local` address joins it rather than starting another."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """300 tiny noise PNGs (two of them truncated), sizes varying, so each goes through decode and resize."""
    folder = tmp_path_factory.mktemp("ray-images") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (9 + i % 5, 12), dtype=np.uint8), "L").save(buffer, "PNG")
        data = buffer.getvalue()
        (folder / f"{i:03d}.png").write_bytes(data[:30] if i in CORRUPT else data)
    return folder


def contents(artifacts: Path, name: str) -> tuple[np.ndarray, list, np.ndarray]:
    index = open_index(artifacts, name)
    ids = index.ids()
    return ids, index.metadata(ids), np.stack([index.vector(int(i)) for i in ids])


def test_a_job_on_ray_writes_the_same_index_as_the_local_runner(image_artifacts: Path, images: Path, write_image_bundle,
                                                               monkeypatch):
    store = JobStore(image_artifacts)
    here = run_job(store.create(JobSpec(source=str(images), model="tiny", index="here", batch_size=32)).id, store,
                   image_artifacts)
    on_ray = run_job(store.create(JobSpec(source=str(images), model="tiny", index="on-ray", batch_size=32)).id, store,
                     image_artifacts, ray=RAY)
    assert on_ray.state == "succeeded", on_ray.error
    assert (on_ray.done, on_ray.failed, on_ray.total, on_ray.index_version) == (IMAGES, 2, IMAGES, "v1")
    assert [e["position"] for e in store.errors(on_ray.id)] == list(CORRUPT)
    assert [e["error"] for e in store.errors(on_ray.id)] == [e["error"] for e in store.errors(here.id)]
    ids, metadata, vectors = contents(image_artifacts, "on-ray")
    local_ids, local_metadata, local_vectors = contents(image_artifacts, "here")
    assert np.array_equal(ids, local_ids) and len(ids) == IMAGES - 2 and metadata == local_metadata
    assert np.array_equal(vectors, local_vectors)  # the same bytes: same preprocessing, same model, same batches
    assert not (image_artifacts / "jobs" / on_ray.id).exists()  # the shards go once the index is written

    # an index: source re-read on the workers, with the model's next version shipped to them: once
    # its files are read for sending, the bundle leaves its folder, so only the copy sent can serve
    write_image_bundle(image_artifacts, "tiny", seed=5)  # tiny v2
    bundle_files, hidden = jobs.ray_runner._bundle_files, image_artifacts / "elsewhere"

    def send_then_hide(bundle):
        files = bundle_files(bundle)
        bundle.path.rename(hidden)
        return files

    monkeypatch.setattr(jobs.ray_runner, "_bundle_files", send_then_hide)
    again = run_job(store.create(JobSpec(source="index:on-ray", model="tiny", index="on-ray", batch_size=64)).id, store,
                    image_artifacts, ray=RayConfig(address="local", replicas=1, ship_bundle=True))
    assert again.state == "succeeded" and (again.index_version, again.model_version) == ("v2", "v2"), again.error
    hidden.rename(image_artifacts / "models" / "tiny" / "v2")
    local = run_job(store.create(JobSpec(source="index:here", model="tiny", index="here", batch_size=64)).id, store,
                    image_artifacts)
    assert local.index_version == "v2"
    new_ids, _, new_vectors = contents(image_artifacts, "on-ray")
    _, _, local_new = contents(image_artifacts, "here")
    assert np.array_equal(new_ids, ids) and not np.allclose(new_vectors, vectors)
    assert np.array_equal(new_vectors, local_new)


def test_cancel_on_ray_discards_the_partial_work_and_leaves_the_live_index(image_artifacts: Path, images: Path):
    store = JobStore(image_artifacts)
    first = run_job(store.create(JobSpec(source=str(images), model="tiny", index="pics")).id, store, image_artifacts)
    job = store.create(JobSpec(source=str(images), model="tiny", index="pics", batch_size=10))
    status = run_job(job.id, store, image_artifacts, ray=RAY, should_stop=cancel_at_check(store, job.id, 2))
    assert status.state == "cancelled" and status.done in (20, 30), status  # seen by shard 2's progress or the next
    assert not (image_artifacts / "jobs" / job.id).exists()
    assert open_index(image_artifacts, "pics").manifest.version == first.index_version == "v1"


def test_a_job_stopped_on_ray_resumes_from_its_shards(image_artifacts: Path, images: Path):
    store = JobStore(image_artifacts)
    job = store.create(JobSpec(source=str(images), model="tiny", index="pics", batch_size=20))
    calls = []

    def stop_after_three_shards():
        calls.append(1)
        return len(calls) == 3

    stopped = run_job(job.id, store, image_artifacts, ray=RAY, should_stop=stop_after_three_shards)
    kept = sorted((image_artifacts / "jobs" / job.id).glob("shard-*.parquet"))
    assert stopped.state == "running" and len(kept) == 3  # replicas finish in any order: which three, Ray says
    assert stopped.done == sum(len(read_shard(p)[0]) for p in kept) + sum(
        1 for p in CORRUPT if int(p) // 20 in {int(k.stem.split("-")[1]) for k in kept})
    # mark one kept shard (zero vectors): a resume that embedded it again would not keep them
    ids, metadata, vectors = read_shard(kept[0])
    write_shard(kept[0], ids, metadata, "v1", np.zeros_like(vectors))

    resumed = run_job(job.id, store, image_artifacts, ray=RAY)
    assert resumed.state == "succeeded" and (resumed.done, resumed.failed) == (IMAGES, 2), resumed
    index = open_index(image_artifacts, "pics")
    assert len(index) == IMAGES - 2 and np.array_equal(index.ids(), np.setdiff1d(np.arange(IMAGES), CORRUPT))
    assert all(not index.vector(int(i)).any() for i in ids)  # the kept shard was not embedded again
    other = int(np.setdiff1d(index.ids(), ids)[0])
    assert index.vector(other).any()


def test_ray_address_in_the_environment_sends_the_cli_s_jobs_to_ray(image_artifacts: Path, images: Path, monkeypatch,
                                                                   capsys):
    from embedserve.cli import main

    runs = []
    real = jobs.ray_runner.embed_on_ray
    monkeypatch.setattr(jobs.ray_runner, "embed_on_ray", lambda config, *rest: runs.append(config) or real(config, *rest))
    monkeypatch.setenv("EMBEDSERVE_RAY_ADDRESS", "local")
    assert main(["jobs", "run", "--source", str(images), "--model", "tiny", "--index", "cli", "--batch-size", "100",
                 "--artifacts", str(image_artifacts), "--ray-replicas", "2"]) == 0
    assert runs == [RayConfig(address="local", replicas=2)] and len(open_index(image_artifacts, "cli")) == IMAGES - 2
    assert '"state": "succeeded"' in capsys.readouterr().out


def test_the_server_s_settings_say_where_its_jobs_run(monkeypatch):
    from serving.settings import Settings

    monkeypatch.setenv("EMBEDSERVE_RAY_ADDRESS", "local")
    monkeypatch.setenv("EMBEDSERVE_RAY_GPUS_PER_REPLICA", "0.5")
    assert Settings().ray_config() == RayConfig(address="local", gpus_per_replica=0.5)
    monkeypatch.delenv("EMBEDSERVE_RAY_ADDRESS")
    assert Settings().ray_config() is None  # unset: jobs run in the server's process


def test_a_job_whose_workers_cannot_read_the_bundle_fails_with_the_reason(image_artifacts: Path, images: Path,
                                                                         monkeypatch):
    store = JobStore(image_artifacts)
    bundle, hidden = image_artifacts / "models" / "tiny" / "v1", image_artifacts / "elsewhere"
    connect = jobs.ray_runner.connect

    def connect_then_hide(address):  # the driver has read the bundle; the workers do not find it at its path
        connect(address)
        bundle.rename(hidden)

    monkeypatch.setattr(jobs.ray_runner, "connect", connect_then_hide)
    status = run_job(store.create(JobSpec(source=str(images), model="tiny", index="pics")).id, store, image_artifacts, ray=RAY)
    hidden.rename(bundle)
    assert status.state == "failed" and "Ray Data pipeline failed" in status.error and "no manifest.json" in status.error
    assert "Traceback" not in status.error and "\n" not in status.error  # the reason, not the workers' traceback
    assert not (image_artifacts / "indexes" / "pics").exists()


def test_a_job_on_ray_reads_and_writes_a_milvus_index(image_artifacts: Path, images: Path, tmp_path: Path,
                                                      write_image_bundle):
    from index.config import IndexConfig
    from index.store import open_index_store

    milvus = open_index_store(image_artifacts, IndexConfig(backend="milvus", milvus_uri=str(tmp_path / "milvus.db")))
    try:
        store = JobStore(image_artifacts)
        first = run_job(store.create(JobSpec(source=str(images), model="tiny", index="m", batch_size=50)).id, store,
                        image_artifacts, ray=RAY, indexes=milvus)
        assert first.state == "succeeded", first.error
        written = milvus.open("m")
        assert len(written) == IMAGES - 2 and np.array_equal(np.sort(written.ids()), np.setdiff1d(np.arange(IMAGES), CORRUPT))
        # index:m re-read on the workers from the item records the driver took from Milvus
        write_image_bundle(image_artifacts, "tiny", seed=5)  # tiny v2
        again = run_job(store.create(JobSpec(source="index:m", model="tiny", index="m", batch_size=50)).id, store,
                        image_artifacts, ray=RAY, indexes=milvus)
        assert again.state == "succeeded" and again.model_version == "v2" and again.failed == 0, again.error
        current = milvus.open("m")
        assert current.model_version == "v2" and np.array_equal(np.sort(current.ids()), np.sort(written.ids()))
        local = run_job(store.create(JobSpec(source=str(images), model="tiny", index="faiss")).id, store, image_artifacts)
        assert local.state == "succeeded"
        assert np.allclose(current.vector(3), open_index(image_artifacts, "faiss").vector(3), atol=1e-5)
    finally:
        milvus.close()


def test_a_replica_runs_as_many_onnxruntime_threads_as_the_cpus_it_reserves():
    from runtime.config import RuntimeConfig
    from jobs.ray_runner import replica_runtime

    assert replica_runtime(RuntimeConfig(), RayConfig(address="auto", cpus_per_replica=2)).intra_op_threads == 2
    assert replica_runtime(RuntimeConfig(), RayConfig(address="auto", cpus_per_replica=0.5)).intra_op_threads == 1
    assert replica_runtime(RuntimeConfig(intra_op_threads=3), RayConfig(address="auto")).intra_op_threads == 3  # a count is kept
