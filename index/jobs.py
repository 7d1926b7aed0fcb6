"""Batch re-embedding jobs: embed every item of a source with a model version, then write a new
version of an index from the result and make it current.

A job's state lives in SQLite (`artifacts/jobs/jobs.sqlite`), its embeddings in Parquet shards
under `artifacts/jobs/<id>/` (index/shards.py), one shard per batch of source positions, each
written atomically. So a process killed mid-job (even by `kill -9`) resumes where it stopped: the
shards it finished are kept, only the rest is embedded, and no item lands in the index twice. An
item that cannot be read is recorded with its error and the job goes on. Cancelling discards
the shards and leaves the live index untouched.

`run_job` is the one function that does a job; the server's job runner (serving/jobs.py) and
`embedserve jobs run` both call it. Sources are those of runtime.sources, plus `index:<name>`:
the items of an existing index, read again from the sources their metadata records.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from index.shards import concatenate, read_shard, shard_path, write_shard
from index.store import FaissStore, IndexStore, SearchIndex, writing
from runtime.bundle import Bundle, BundleError, open_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder, planned_precision
from runtime.files import check_name, exclusive, lock_file
from runtime.preprocessing import ImageLimits, PreprocessingSpec, preprocess_arrays, preprocess_image
from runtime.sources import ImageSource, Roots, SourceError, open_source, read_item

if TYPE_CHECKING:  # Ray and its config only for the jobs that run on it
    from index.jobs_ray import RayConfig

log = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
INDEX_PREFIX = "index:"
MAX_BATCH_SIZE = 4096  # a batch is one shard: rows held in memory at once


class JobQueueFull(Exception):
    """As many jobs wait as may: a new one is refused rather than queued behind them."""

    def __init__(self, waiting: int):
        super().__init__(f"{waiting} jobs are waiting")
        self.waiting = waiting


@dataclass(frozen=True)
class JobSpec:
    """What a job does; what `POST /jobs` and `embedserve jobs run` take."""

    source: str  # fashion-mnist:train|test, a folder, a .csv/.jsonl manifest, or index:<name>
    model: str  # the image model (bundle name) to embed with
    index: str  # the index to write a new version of
    model_version: str | None = None  # the bundle version; None: the model's current one
    batch_size: int = 256  # items per model call, and per shard

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size {self.batch_size} must be between 1 and {MAX_BATCH_SIZE}")
        for name in ("source", "model", "index"):
            if not getattr(self, name).strip():
                raise ValueError(f"a job needs a {name}")
        check_name(self.index, "index name")
        check_name(self.model, "model name")
        if self.model_version is not None:
            check_name(self.model_version, "model version")


@dataclass(frozen=True)
class JobStatus:
    """A job as `GET /jobs/{id}` shows it."""

    id: str
    spec: JobSpec
    state: str  # one of STATES
    done: int = 0  # items processed (embedded or failed)
    failed: int = 0  # items that could not be read or embedded
    total: int | None = None  # items in the source, once it is opened
    items_per_second: float | None = None  # over this run of the job
    eta_s: float | None = None  # seconds left at that rate
    error: str | None = None  # why a failed job failed
    index_version: str | None = None  # the index version a succeeded job wrote
    model_version: str | None = None  # the bundle version it embedded with
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    cancel_requested: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jobs_dir(artifacts: Path) -> Path:
    return Path(artifacts) / "jobs"


class JobStore:
    """Jobs and their per-item errors in SQLite; safe to use from several threads and processes
    (a connection per call, write-ahead log)."""

    def __init__(self, artifacts: Path):
        self.folder = jobs_dir(artifacts)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "jobs.sqlite"
        self._local = threading.local()  # a connection per thread: opening one per call costs more than the call
        with self._db() as db:
            db.executescript(
                "PRAGMA journal_mode=WAL;"
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, status TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS item_errors (job TEXT NOT NULL, position INTEGER NOT NULL, error TEXT NOT NULL,"
                " PRIMARY KEY (job, position));"
            )

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=30)
        with db:  # one transaction, committed (or rolled back) on the way out
            yield db

    def create(self, spec: JobSpec, max_waiting: int | None = None) -> JobStatus:
        """Queue a job; JobQueueFull when `max_waiting` jobs already wait (counted and added in one
        transaction, so processes sharing the store cannot together pass the limit)."""
        status = JobStatus(id=uuid.uuid4().hex[:12], spec=spec, state="queued", created_at=_now())
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            if max_waiting is not None and (waiting := self._waiting(db)) >= max_waiting:
                raise JobQueueFull(waiting)
            db.execute("INSERT INTO jobs (id, created_at, status) VALUES (?, ?, ?)",
                       (status.id, status.created_at, json.dumps(status.to_dict())))
        return status

    def get(self, job_id: str) -> JobStatus:
        with self._db() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _status_from_json(row[0])

    def waiting(self) -> int:
        """How many jobs are queued and not yet running."""
        with self._db() as db:
            return self._waiting(db)

    @staticmethod
    def _waiting(db: sqlite3.Connection) -> int:
        return db.execute("SELECT COUNT(*) FROM jobs WHERE json_extract(status, '$.state') = 'queued'").fetchone()[0]

    def list(self) -> list[JobStatus]:
        with self._db() as db:
            rows = db.execute("SELECT status FROM jobs ORDER BY created_at, rowid").fetchall()
        return [_status_from_json(r[0]) for r in rows]

    def update(self, job_id: str, **changes: Any) -> JobStatus:
        """Change fields of a job's status; a cancel asked for meanwhile is kept: the read and the
        write are one transaction that holds the write lock from the start (BEGIN IMMEDIATE), so
        two threads' updates (the job's progress, a cancel from a request) never overwrite each other."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            status = replace(_status_from_json(row[0]), **changes)
            db.execute("UPDATE jobs SET status = ? WHERE id = ?", (json.dumps(status.to_dict()), job_id))
        return status

    def record_errors(self, job_id: str, errors: dict[int, str]) -> None:
        """Per-item errors by source position; recording one twice (a resumed batch) keeps one."""
        with self._db() as db:
            db.executemany("INSERT OR IGNORE INTO item_errors (job, position, error) VALUES (?, ?, ?)",
                           [(job_id, p, e[:1000]) for p, e in errors.items()])

    def errors(self, job_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT position, error FROM item_errors WHERE job = ? ORDER BY position LIMIT ?",
                              (job_id, limit)).fetchall()
        return [{"position": p, "error": e} for p, e in rows]

    def error_count(self, job_id: str) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM item_errors WHERE job = ?", (job_id,)).fetchone()[0]

    def unfinished(self) -> list[JobStatus]:
        """Jobs queued or running (a running one was cut short by a stop or a crash), oldest first."""
        return [s for s in self.list() if s.state not in FINISHED]


def _status_from_json(text: str) -> JobStatus:
    data = json.loads(text)
    return JobStatus(**{**data, "spec": JobSpec(**data["spec"])})


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


@dataclass
class _Batch:
    """One shard's worth of source positions, read and preprocessed."""

    number: int
    ids: np.ndarray  # (n,) of the items that could be read
    metadata: list[dict[str, Any]]
    inputs: np.ndarray  # (n, C, H, W)
    errors: dict[int, str]  # position -> why it could not be read


def prepare_batch(source: ImageSource, preprocessing: PreprocessingSpec, number: int, size: int) -> _Batch:
    """Shard `number` of `source` (its positions number*size onwards), read and preprocessed: what
    a job embeds, here or on a Ray worker (index/jobs_ray.py), so an item embeds the same in both."""
    count = source.count
    positions = range(number * size, min((number + 1) * size, count))
    fast = preprocess_arrays(source.arrays(positions), preprocessing) if source.arrays else None
    if fast is not None:  # pixels in memory at the model's size: one vectorised pass, the same numbers
        ids = source.ids[positions.start:positions.stop] if source.ids is not None else np.arange(
            positions.start, positions.stop, dtype=np.int64)
        return _Batch(number, ids, [source.metadata(p) for p in positions], fast, {})
    good, inputs, errors = [], [], {}
    for p in positions:
        try:
            inputs.append(preprocess_image(source.read(p), preprocessing))  # (C, H, W)
            good.append(p)
        except (ValueError, OSError) as e:  # unreadable, corrupt, forbidden: recorded, the job goes on
            errors[p] = f"{type(e).__name__}: {e}"
    ids = source.ids[good] if source.ids is not None else np.asarray(good, dtype=np.int64)
    batch = np.stack(inputs) if inputs else np.empty((0, *preprocessing.input_shape), np.float32)
    return _Batch(number, ids, [source.metadata(p) for p in good], batch, errors)  # inputs (n, C, H, W)


def _embed_here(job_id: str, todo: list[int], prepare: Callable[[int], _Batch], bundle: Bundle,
                runtime: RuntimeConfig) -> Iterator[tuple[_Batch, np.ndarray]]:
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
    With `ray`, the shards are embedded by a Ray Data pipeline (index/jobs_ray.py); the rest is the same."""
    status = store.get(job_id)
    if status.state in FINISHED:  # e.g. cancelled while it waited in the queue
        return status
    spec = status.spec
    shards = jobs_dir(artifacts) / job_id
    started = time.perf_counter()
    status = store.update(job_id, state="running", started_at=_now(), error=None)
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

        def finish(batch: _Batch, vectors: np.ndarray) -> JobStatus:
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
            from index.jobs_ray import embed_on_ray  # Ray is imported only by the jobs that run on it

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
        return store.update(job_id, state="succeeded", index_version=version, finished_at=_now(), eta_s=0.0)
    except (BundleError, SourceError, ValueError, OSError, RuntimeError) as e:
        log.warning("job %s failed: %s", job_id, e)
        return store.update(job_id, state="failed", error=str(e), finished_at=_now())


def _cancel(store: JobStore, job_id: str, shards: Path) -> JobStatus:
    shutil.rmtree(shards, ignore_errors=True)  # the partial work goes; the live index never saw it
    return store.update(job_id, state="cancelled", finished_at=_now(), eta_s=None)


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


