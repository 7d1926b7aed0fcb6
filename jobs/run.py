"""Batch re-embedding jobs: embed every item of a source with a model version, then write a new
version of an index from the result and make it current.

A job's state lives in SQLite (`artifacts/jobs/jobs.sqlite`), its embeddings in Parquet shards
under `artifacts/jobs/<id>/` (jobs/shards.py), one shard per batch of source positions, each
written atomically. So a process killed mid-job (even by `kill -9`) resumes where it stopped: the
shards it finished are kept, only the rest is embedded, and no item lands in the index twice. An
item that cannot be read is recorded with its error and the job goes on. Cancelling discards
the shards and leaves the live index untouched.

`run_job` is the one function that does a job; the server's job runner (serving/job_worker.py) and
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from index.batches import Batch, prepare_batch
from index.store import FaissStore, IndexStore, SearchIndex, writing
from jobs.shards import concatenate, read_shard, shard_path, write_shard
from jobs.store import FINISHED, INDEX_PREFIX, JobSpec, JobStatus, JobStore, jobs_dir, now
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
    spec, shards, started = status.spec, jobs_dir(artifacts) / job_id, time.perf_counter()
    store.update(job_id, state="running", started_at=now(), error=None)
    try:
        bundle = _open_image_encoder(artifacts, spec)
        source = open_job_source(spec.source, artifacts, limits, roots, indexes)
        run, status = _resume(store, job_id, spec, bundle, source, shards, started)
        status = _write_shards(run, status, _embed(run, runtime, ray), progress, should_stop)
        if run.stopped:  # the process is stopping: what is embedded is written, the job resumes at the next start
            return status
        if status.cancel_requested:
            return _cancel(store, job_id, shards)
        ids, metadata, vectors = _collect(run)
        indexes = indexes or FaissStore(artifacts)
        version = _save_index(run, ids, metadata, vectors, artifacts, indexes, runtime, publish)
        indexes.prune(spec.index, keep_previous)
        shutil.rmtree(shards, ignore_errors=True)
        log.info("job %s: index %s %s, %d items (%d failed)", job_id, spec.index, version, len(ids), run.failed)
        return store.update(job_id, state="succeeded", index_version=version, finished_at=now(), eta_s=0.0)
    except (BundleError, SourceError, ValueError, OSError, RuntimeError) as e:
        log.warning("job %s failed: %s", job_id, e)
        return store.update(job_id, state="failed", error=str(e), finished_at=now())


@dataclass
class _Run:
    """One run of a job: what it embeds with, what the shards of earlier runs already hold, and
    how far it has come."""

    job_id: str
    store: JobStore
    spec: JobSpec
    bundle: Bundle
    source: ImageSource
    shards: Path  # the job's folder of Parquet shards, one per batch of source positions
    todo: list[int]  # the shard numbers this run embeds: those no earlier run finished
    done: int  # items processed (embedded or failed), earlier runs' included
    failed: int  # items that could not be read or embedded, earlier runs' included
    resumed_at: int  # `done` when this run began: its rate counts only its own items
    started: float  # time.perf_counter() when this run began
    embedded: dict[int, tuple] = field(default_factory=dict)  # this run's shards, kept in memory for the index: no reading them back
    stopped: bool = False  # the process stopped the run before its last batch

    @property
    def numbers(self) -> range:
        """Every shard number of the source, in order."""
        size = self.spec.batch_size
        return range((self.source.count + size - 1) // size)

    def write(self, batch: Batch, vectors: np.ndarray, bar: tqdm) -> JobStatus:
        """Record batch `batch`'s errors, write its shard and the job's progress; the status written."""
        count, manifest = self.source.count, self.bundle.manifest
        self.store.record_errors(self.job_id, batch.errors)  # before the shard: a resumed batch re-records, never loses them
        write_shard(shard_path(self.shards, batch.number), batch.ids, batch.metadata, manifest.version, vectors)
        self.embedded[batch.number] = (batch.ids, batch.metadata, vectors)
        self.done += len(batch.ids) + len(batch.errors)
        self.failed += len(batch.errors)
        bar.update(len(batch.ids) + len(batch.errors))
        rate = (self.done - self.resumed_at) / max(time.perf_counter() - self.started, 1e-9)
        return self.store.update(self.job_id, done=self.done, failed=self.failed, items_per_second=round(rate, 1),
                                 eta_s=round((count - self.done) / rate, 1) if rate > 0 else None)


def _open_image_encoder(artifacts: Path, spec: JobSpec) -> Bundle:
    """The model bundle the job embeds with; BundleError unless it is an image encoder."""
    bundle = open_bundle(artifacts, spec.model, spec.model_version)
    manifest = bundle.manifest
    if manifest.kind not in ("image-encoder", "image-text-encoder") or manifest.preprocessing is None:
        raise BundleError(f"model {spec.model!r} is a {manifest.kind}; a job embeds images with an image encoder")
    return bundle


def _resume(store: JobStore, job_id: str, spec: JobSpec, bundle: Bundle, source: ImageSource, shards: Path,
            started: float) -> tuple[_Run, JobStatus]:
    """This run of the job, and its status: the shards an earlier run finished are kept, so the
    items they hold (and the errors it recorded) count as done."""
    count, size = source.count, spec.batch_size
    todo = [n for n in range((count + size - 1) // size) if not shard_path(shards, n).is_file()]
    done = count - sum(min(size, count - n * size) for n in todo)
    failed = store.error_count(job_id)
    status = store.update(job_id, total=count, done=done, failed=failed, model_version=bundle.manifest.version)
    return _Run(job_id, store, spec, bundle, source, shards, todo, done, failed, resumed_at=done, started=started), status


def _embed(run: _Run, runtime: RuntimeConfig, ray: RayConfig | None) -> Iterator[tuple[Batch, np.ndarray]]:
    """(batch, vectors (n, D)) of each shard number the run has to do, by the model replicas of a
    Ray Data pipeline with `ray`, else in this process."""
    if ray is not None:
        from jobs.ray_runner import embed_on_ray  # Ray is imported only by the jobs that run on it

        return embed_on_ray(ray, run.spec, run.todo, run.bundle, run.source, runtime)
    preprocessing, size = run.bundle.manifest.preprocessing, run.spec.batch_size
    return _embed_here(run.job_id, run.todo, lambda n: prepare_batch(run.source, preprocessing, n, size),
                       run.bundle, runtime)


def _write_shards(run: _Run, status: JobStatus, batches: Iterator[tuple[Batch, np.ndarray]], progress: bool,
                  should_stop: Callable[[], bool]) -> JobStatus:
    """Write each batch's shard and progress as `batches` hands them over; the status last written.
    Three stages overlap: the next batch is read and preprocessed, this one embedded (in `batches`),
    the last one written in its own thread. Ends early, `batches` closed, when a cancel is asked
    for (the status returned says so) or when `should_stop()` says so (`run.stopped` set)."""
    spec = run.spec
    with closing(batches), ThreadPoolExecutor(1, thread_name_prefix=f"job-{run.job_id}-write") as writer, \
            tqdm(total=run.source.count, initial=run.done, desc=f"job {run.job_id} {spec.source}", unit="img",
                 disable=not progress) as bar:
        written = None
        for i, (batch, vectors) in enumerate(batches):
            if written is not None:
                status = written.result()  # one batch in writing at a time: its errors surface here
                if status.cancel_requested:
                    return status
            written = writer.submit(run.write, batch, vectors, bar)
            if should_stop() and i + 1 < len(run.todo):
                run.stopped = True
                return written.result()
        return written.result() if written is not None else status


def _collect(run: _Run) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """(ids (N,), metadata records, vectors (N, D)) of every shard in order: this run's from memory,
    those a killed run finished from disk; SourceError when no item could be embedded."""
    ids, metadata, vectors = concatenate([run.embedded.get(n) or read_shard(shard_path(run.shards, n))
                                          for n in run.numbers])
    if len(ids) == 0:
        raise SourceError(f"no item of {run.spec.source!r} could be embedded ({run.failed} failed); see the job's errors")
    return ids, metadata, vectors


def _save_index(run: _Run, ids: np.ndarray, metadata: list[dict[str, Any]], vectors: np.ndarray, artifacts: Path,
                indexes: IndexStore, runtime: RuntimeConfig, publish: Callable[[SearchIndex], None] | None) -> str:
    """Build the job's index from its items, save it as the index's next version and publish it
    while item writes wait; the version saved."""
    spec, manifest = run.spec, run.bundle.manifest
    index = indexes.build(spec.index, ids, vectors, metadata, model=manifest.name, model_version=manifest.version)
    precision = planned_precision(manifest, runtime, "image_encoder")  # so a server can tell its queries differ
    with writing(artifacts, spec.index):  # item writes wait, then apply to this version (Registry.write_index)
        version = indexes.save(index, spec.index, extra={"source": run.source.description, "job": run.job_id,
                                                         "precision": precision})
        if publish is not None:
            publish(index)
    return version


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


