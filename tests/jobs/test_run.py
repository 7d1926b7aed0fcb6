import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index.vector_index import open_index
import jobs.run
from jobs.run import request_cancel, run_job
from jobs.shards import read_shard
from jobs.store import JobSpec, JobStore
from runtime.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT
from runtime.sources import SourceForbidden, confine
from tests.images import write_pngs
from tests.jobs.driving import cancel_at_check

ROOT = Path(__file__).resolve().parents[2]
needs_fashion_mnist = pytest.mark.skipif(not (DEFAULT_FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file()
                                         and not (DEFAULT_FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte").is_file(),
                                         reason="the Debian package dataset-fashion-mnist is not installed")


class CountingEncoders:
    """Wraps runtime's load_encoder so a test can count the rows a job embeds."""

    def __init__(self, monkeypatch):
        self.rows = 0
        real = jobs.run.load_encoder

        def load(*args, **kwargs):
            encoder = real(*args, **kwargs)
            encode = encoder.encode

            def counting(batch):
                self.rows += len(batch)
                return encode(batch)

            encoder.encode = counting
            return encoder

        monkeypatch.setattr(jobs.run, "load_encoder", load)


def test_a_job_embeds_a_folder_into_a_new_current_index_version(image_artifacts: Path, tmp_path: Path, monkeypatch,
                                                                write_image_bundle):
    counter = CountingEncoders(monkeypatch)
    folder = write_pngs(tmp_path / "images", 25, corrupt=(7,))
    store = JobStore(image_artifacts)
    job = store.create(JobSpec(source=str(folder), model="tiny", index="pics", batch_size=10))
    status = run_job(job.id, store, image_artifacts)
    assert status.state == "succeeded", status.error
    assert (status.done, status.failed, status.total, status.index_version) == (25, 1, 25, "v1")
    assert counter.rows == 24  # every readable item once; the corrupt one recorded, not embedded
    (error,) = store.errors(job.id)
    assert error["position"] == 7 and "007.png" in error["error"] and "truncated or corrupt" in error["error"]
    index = open_index(image_artifacts, "pics")
    assert len(index) == 24 and 7 not in index and (index.model, index.model_version) == ("tiny", "v1")
    assert index.metadata([3])[0] == {"source": str(folder.resolve()), "path": "003.png", "class": None}
    assert not (image_artifacts / "jobs" / job.id).exists()  # the shards go once the index is written

    # re-embed that index's items with another version of the model: same ids, new vectors
    write_image_bundle(image_artifacts, "tiny", seed=5)  # tiny v2
    again = run_job(store.create(JobSpec(source="index:pics", model="tiny", index="pics")).id, store, image_artifacts)
    assert again.state == "succeeded" and again.index_version == "v2" and again.model_version == "v2"
    new = open_index(image_artifacts, "pics")
    assert (new.manifest.version, new.model_version) == ("v2", "v2")
    assert np.array_equal(new.ids(), index.ids()) and not np.allclose(new.vector(3), index.vector(3))


def test_a_job_with_a_missing_model_or_source_fails_with_the_reason(image_artifacts: Path):
    store = JobStore(image_artifacts)
    status = run_job(store.create(JobSpec(source="fashion-mnist:test", model="nope", index="x")).id, store, image_artifacts)
    assert status.state == "failed" and "no model named 'nope'" in status.error
    status = run_job(store.create(JobSpec(source="/no/such/folder", model="tiny", index="x")).id, store, image_artifacts)
    assert status.state == "failed" and "neither a folder" in status.error
    assert not (image_artifacts / "indexes" / "x").exists()


def test_cancel_discards_the_partial_work_and_leaves_the_live_index(image_artifacts: Path, tmp_path: Path):
    folder = write_pngs(tmp_path / "images", 30)
    store = JobStore(image_artifacts)
    first = run_job(store.create(JobSpec(source=str(folder), model="tiny", index="pics")).id, store, image_artifacts)
    job = store.create(JobSpec(source=str(folder), model="tiny", index="pics", batch_size=5))
    status = run_job(job.id, store, image_artifacts, should_stop=cancel_at_check(store, job.id, 2))
    assert status.state == "cancelled" and status.done in (10, 15)  # asked while batch 2 was written: seen by it or the next
    assert not (image_artifacts / "jobs" / job.id).exists()
    assert open_index(image_artifacts, "pics").manifest.version == first.index_version == "v1"
    queued = store.create(JobSpec(source=str(folder), model="tiny", index="pics"))
    assert request_cancel(store, queued.id).state == "cancelled"  # a queued job is cancelled at once


def test_paths_outside_the_data_roots_are_forbidden(tmp_path: Path):
    allowed = write_pngs(tmp_path / "allowed", 1)
    secret = write_pngs(tmp_path / "secret", 1)
    (allowed / "link").symlink_to(secret)
    assert confine(allowed / "000.png", [allowed]) == (allowed / "000.png").resolve()
    for path in (secret, allowed / ".." / "secret", allowed / "link", allowed / "link" / "000.png", Path("/etc/passwd")):
        with pytest.raises(SourceForbidden, match="outside the folders this server may read"):
            confine(path, [allowed])
    with pytest.raises(SourceForbidden):
        confine(allowed, [])  # no data roots: no path at all


@needs_fashion_mnist
def test_a_job_killed_mid_way_resumes_and_embeds_every_item_exactly_once(image_artifacts: Path, monkeypatch):
    # the CLI runs the job in its own process; it is killed with SIGKILL once some shards are on disk
    command = [sys.executable, "-m", "embedserve", "jobs", "run", "--source", "fashion-mnist:train", "--model", "tiny",
               "--index", "fm", "--batch-size", "100", "--artifacts", str(image_artifacts)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    job_id = process.stdout.readline().split()[1].rstrip(":")
    store, deadline = JobStore(image_artifacts), time.monotonic() + 120
    while time.monotonic() < deadline and store.get(job_id).done < 3000:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = store.get(job_id)
    assert killed.state == "running" and 3000 <= killed.done < 60_000, killed  # cut short, mid-way
    kept = sum(len(read_shard(path)[0]) for path in (image_artifacts / "jobs" / job_id).glob("shard-*.parquet"))

    counter = CountingEncoders(monkeypatch)
    status = run_job(job_id, store, image_artifacts)  # what a restarted server does with an unfinished job
    assert status.state == "succeeded" and status.done == 60_000 and status.failed == 0
    assert counter.rows == 60_000 - kept  # the finished shards were not embedded again
    index = open_index(image_artifacts, "fm")
    assert len(index) == 60_000 and np.array_equal(index.ids(), np.arange(60_000))  # each item exactly once


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_manifest_source_keeps_its_columns_and_refuses_listed_paths_outside_the_roots(image_artifacts: Path, tmp_path: Path,
                                                                                       suffix: str):
    allowed = write_pngs(tmp_path / "allowed", 3)
    outside = write_pngs(tmp_path / "outside", 1)
    rows = [{"path": "000.png", "caption": "a cat"}, {"path": "sub/../001.png", "caption": "a dog"},
            {"path": str(outside / "000.png"), "caption": "not yours"}]
    manifest = allowed / f"items{suffix}"
    if suffix == ".csv":
        manifest.write_text("path,caption\n" + "".join(f"{r['path']},{r['caption']}\n" for r in rows))
    else:
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = JobStore(image_artifacts)
    job = store.create(JobSpec(source=str(manifest), model="tiny", index="m"))
    status = run_job(job.id, store, image_artifacts, roots=[allowed])
    assert status.state == "succeeded" and (status.done, status.failed) == (3, 1)
    assert "SourceForbidden" in store.errors(job.id)[0]["error"]  # the listed path outside the roots: never read
    index = open_index(image_artifacts, "m")
    assert [m["caption"] for m in index.metadata([0, 1])] == ["a cat", "a dog"]
    outside_roots = run_job(store.create(JobSpec(source=str(manifest), model="tiny", index="m2")).id, store,
                            image_artifacts, roots=[tmp_path / "elsewhere"])
    assert outside_roots.state == "failed" and "outside the folders" in outside_roots.error
