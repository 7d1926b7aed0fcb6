"""Batch re-embedding jobs: embed every item of a source with a model version, then write a new
version of an index from the result and make it current.

A job's state lives in SQLite (`artifacts/jobs/jobs.sqlite`), its embeddings in Parquet shards
under `artifacts/jobs/<id>/` (jobs/shards.py), one shard per batch of source positions, each
written atomically. So a process killed mid-job (even by `kill -9`) resumes where it stopped: the
shards it finished are kept, only the rest is embedded, and no item lands in the index twice. An
item that cannot be read is recorded with its error and the job goes on. Cancelling discards
the shards and leaves the live index untouched.

`run_job` is the one function that does a job; the server's job runner (serving/jobs.py) and
`embedserve jobs run` both call it. A job's model and state are in jobs/store.py, the batches it
embeds in index/batches.py, its Ray runner in jobs/ray_runner.py. Sources are those of runtime.sources, plus `index:<name>`:
the items of an existing index, read again from the sources their metadata records.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, closing
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from index.batches import Batch, prepare_batch
from index.store import FaissStore, IndexStore, SearchIndex, writing
from jobs.shards import concatenate, read_shard, shard_path, write_shard
from jobs.store import FINISHED, INDEX_PREFIX, JobStatus, JobStore, jobs_dir, now
from runtime.bundle import Bundle, BundleError, open_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder, planned_precision
from runtime.files import exclusive, lock_file
from runtime.preprocessing import ImageLimits
from runtime.sources import ImageSource, Roots, SourceError, open_source, read_item

if TYPE_CHECKING:  # Ray and its config only for the jobs that run on it
    from jobs.ray_runner import RayConfig

log = logging.getLogger(__name__)


def open_job_source(source: str, artifacts: Path, limits: ImageLimits = ImageLimits(), roots: Roots = None,
                    indexes: IndexStore | None = None) -> ImageSource:
    """A runtime source, or `index:<name>`: the items of an index (its ids kept, from `indexes`:
    FAISS folders under `artifacts` by default), each read again from the source its metadata records."""
    if not source.startswith(INDEX_PREFIX):
        return open_source(source, limits, roots)
    name = source[len(INDEX_PREFIX):]
    try:
        index = (indexes or FaissStore(artifacts)).open(name)
    except BundleError as e:
        raise SourceError(f"source {source!r}: {e}") from e
    ids = index.ids()  # (N,) int64, ascending
    records = index.metadata(ids)
    fallback = index.manifest.extra.get("source")  # a str: Ray ships this closure to its workers, not the index

    def read(position: int):
        return read_item(records[position] or {}, limits, roots, default_source=fallback)

    return ImageSource(source, len(ids), read, lambda position: records[position] or {}, ids)


def _embed_here(job_id: str, todo: list[int], prepare: Callable[[int], Batch], bundle: Bundle,
                runtime: RuntimeConfig) -> Iterator[tuple[Batch, np.ndarray]]:
    """(batch, vectors (n, D)) of each shard number in `todo`, embedded in this process: the next
    batch is read and preprocessed in a thread while this one is embedded."""
    encoder = load_encoder(bundle, runtime, role="image_encoder")
    with closing(encoder), ThreadPoolExecutor(1, thread_name_prefix=f"job-{job_id}-read") as reader:
        pending = reader.submit(prepare, todo[0]) if todo else None
        for i in range(len(todo)):
            batch = pending.result()
            pending = reader.submit(prepare, todo[i + 1]) if i + 1 < len(todo) else None
            yield batch, (encoder.encode(batch.inputs) if len(batch.ids) else np.empty((0, bundle.manifest.dim), np.float32))


def run_job(job_id: str, store: JobStore, artifacts: Path, runtime: RuntimeConfig = RuntimeConfig(),
            limits: ImageLimits = ImageLimits(), roots: Roots = None, progress: bool = False,
            should_stop: Callable[[], bool] = lambda: False, keep_previous: int = 2,
            publish: Callable[[SearchIndex], None] | None = None, ray: RayConfig | None = None,
            indexes: IndexStore | None = None) -> JobStatus:
    """Run (or resume) job `job_id` to the end: embed what its shards lack, write the new index
    version and make it current. Returns the final status: succeeded, failed (with the error) or
    cancelled (when a cancel request in the store says so between batches). When `should_stop()`
    says so between batches, it returns the job still running, its shards kept for a resume.
    Expected errors (a missing model, a source that cannot be read) fail the job, not the caller.
    `publish(index)`, when given, is called with the new index version before the job is marked
    succeeded, so whoever sees it succeeded already finds the index served (the server's runner).
    `indexes` is where the version is written (FAISS folders under `artifacts` by default, or Milvus).
    With `ray`, the shards are embedded by a Ray Data pipeline (jobs/ray_runner.py); the rest is the same."""
    status = store.get(job_id)
    if status.state in FINISHED:  # e.g. cancelled while it waited in the queue
        return status
    spec = status.spec
    shards = jobs_dir(artifacts) / job_id
    started = time.perf_counter()
    status = store.update(job_id, state="running", started_at=now(), error=None)
    try:
        bundle = open_bundle(artifacts, spec.model, spec.model_version)
        manifest = bundle.manifest
        if manifest.kind not in ("image-encoder", "image-text-encoder") or manifest.preprocessing is None:
            raise BundleError(f"model {spec.model!r} is a {manifest.kind}; a job embeds images with an image encoder")
        source = open_job_source(spec.source, artifacts, limits, roots, indexes)
        count, size = source.count, spec.batch_size
        numbers = range((count + size - 1) // size)
        todo = [n for n in numbers if not shard_path(shards, n).is_file()]
        done = count - sum(min(size, count - n * size) for n in todo)
        failed = store.error_count(job_id)
        status = store.update(job_id, total=count, done=done, failed=failed, model_version=manifest.version)
        resumed_at = done

        embedded: dict[int, tuple] = {}  # this run's shards, kept in memory for the index: no reading them back

        def finish(batch: Batch, vectors: np.ndarray) -> JobStatus:
            nonlocal done, failed
            store.record_errors(job_id, batch.errors)  # before the shard: a resumed batch re-records, never loses them
            write_shard(shard_path(shards, batch.number), batch.ids, batch.metadata, manifest.version, vectors)
            embedded[batch.number] = (batch.ids, batch.metadata, vectors)
            done += len(batch.ids) + len(batch.errors)
            failed += len(batch.errors)
            bar.update(len(batch.ids) + len(batch.errors))
            rate = (done - resumed_at) / max(time.perf_counter() - started, 1e-9)
            return store.update(job_id, done=done, failed=failed, items_per_second=round(rate, 1),
                                eta_s=round((count - done) / rate, 1) if rate > 0 else None)

        # Three stages overlap: the next batch is read and preprocessed, this one embedded (here, or by
        # the model replicas of a Ray Data pipeline), the last one written (its shard, then its
        # progress) in its own thread.
        if ray is not None:
            from jobs.ray_runner import embed_on_ray  # Ray is imported only by the jobs that run on it

            batches = embed_on_ray(ray, spec, todo, bundle, source, runtime)
        else:
            batches = _embed_here(job_id, todo, lambda n: prepare_batch(source, manifest.preprocessing, n, size),
                                  bundle, runtime)
        with closing(batches), ThreadPoolExecutor(1, thread_name_prefix=f"job-{job_id}-write") as writer, \
                tqdm(total=count, initial=done, desc=f"job {job_id} {spec.source}", unit="img", disable=not progress) as bar:
            written = None
            for i, (batch, vectors) in enumerate(batches):
                if written is not None:
                    status = written.result()  # one batch in writing at a time: its errors surface here
                    if status.cancel_requested:
                        return _cancel(store, job_id, shards)
                written = writer.submit(finish, batch, vectors)
                if should_stop() and i + 1 < len(todo):
                    # the process is stopping: what is embedded is written, the job resumes at the next start
                    return written.result()
            if written is not None:
                status = written.result()
        if status.cancel_requested:
            return _cancel(store, job_id, shards)
        # every shard in order: this run's from memory, those a killed run finished from disk
        ids, metadata, vectors = concatenate([embedded.get(n) or read_shard(shard_path(shards, n)) for n in numbers])
        if len(ids) == 0:
            raise SourceError(f"no item of {spec.source!r} could be embedded ({failed} failed); see the job's errors")
        indexes = indexes or FaissStore(artifacts)
        index = indexes.build(spec.index, ids, vectors, metadata, model=manifest.name, model_version=manifest.version)
        precision = planned_precision(manifest, runtime, "image_encoder")  # so a server can tell its queries differ
        with writing(artifacts, spec.index):  # item writes wait, then apply to this version (Registry.write_index)
            version = indexes.save(index, spec.index, extra={"source": source.description, "job": job_id, "precision": precision})
            if publish is not None:
                publish(index)
        indexes.prune(spec.index, keep_previous)
        shutil.rmtree(shards, ignore_errors=True)
        log.info("job %s: index %s %s, %d items (%d failed)", job_id, spec.index, version, len(ids), failed)
        return store.update(job_id, state="succeeded", index_version=version, finished_at=now(), eta_s=0.0)
    except (BundleError, SourceError, ValueError, OSError, RuntimeError) as e:
        log.warning("job %s failed: %s", job_id, e)
        return store.update(job_id, state="failed", error=str(e), finished_at=now())


def _cancel(store: JobStore, job_id: str, shards: Path) -> JobStatus:
    shutil.rmtree(shards, ignore_errors=True)  # the partial work goes; the live index never saw it
    return store.update(job_id, state="cancelled", finished_at=now(), eta_s=None)


def claim(artifacts: Path, job_id: str) -> AbstractContextManager[bool]:
    """Take job `job_id`'s lock without waiting: True while this process may run it, False when
    another one (another worker of the same artifacts folder) holds it and runs it."""
    return exclusive(lock_file(artifacts, f"job.{job_id}"), wait=False)


def request_cancel(store: JobStore, job_id: str) -> JobStatus:
    """Ask job `job_id` to stop: a queued one is cancelled now, a running one after its batch."""
    status = store.get(job_id)
    if status.state in FINISHED:
        return status
    if status.state == "queued":
        return _cancel(store, job_id, store.folder / job_id)
    return store.update(job_id, cancel_requested=True)


