"""A job's model and state: what a job does (JobSpec), how far it is (JobStatus), and the SQLite
store (`artifacts/jobs/jobs.sqlite`) that keeps both, shared by every process of the artifacts
folder (the server's workers, `embedserve jobs run`)."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.files import check_name

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


def now() -> str:
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
        status = JobStatus(id=uuid.uuid4().hex[:12], spec=spec, state="queued", created_at=now())
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
