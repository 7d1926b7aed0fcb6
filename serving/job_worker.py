"""The server's job runner: batch re-embedding jobs (jobs/run.py) in a bounded background
worker, and the live switch to the index each one writes.

One job runs at a time, in a worker thread whose scheduling priority is lowered (Linux `nice`),
so a job takes the CPU that requests leave and never starves them. When a job succeeds, its new
index version is loaded off the event loop and published through the registry (model version
first, then the index). Jobs that a stop or a crash cut short are resumed at start-up. With
several workers on one artifacts folder, a job runs in one of them: each takes a job's lock file
before running it, and a worker that finds it held leaves the job to the one that holds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable

from index.store import IndexStore, SearchIndex, open_index_store
from jobs.run import claim, request_cancel, run_job
from jobs.store import INDEX_PREFIX, JobQueueFull, JobSpec, JobStatus, JobStore
from runtime.bundle import BundleError, open_bundle
from runtime.sources import check_source
from serving.errors import JobsFull, UnknownIndex
from serving.registry import Registry, retire_later
from serving.settings import Settings

log = logging.getLogger(__name__)


def _lower_priority(nice: int) -> None:
    """Lower this thread's priority by `nice` (Linux schedules threads one by one)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
    except (AttributeError, OSError) as e:  # not Linux, or not allowed: the job runs at the server's priority
        log.info("job threads keep the server's priority (%s)", e)


class JobRunner:
    """Queues jobs, runs them one at a time, and publishes what they write to `registry()`."""

    def __init__(self, settings: Settings, registry: Callable[[], Registry | None]):
        self.settings = settings
        self.registry = registry
        self.store = JobStore(settings.artifacts_dir)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._running: asyncio.Future | None = None  # the thread running the current job
        self._stopping = threading.Event()

    async def start(self) -> None:
        """Start the worker and queue again the jobs a stop or a crash left unfinished."""
        for status in self.store.unfinished():
            log.info("resuming job %s (%s, %d of %s done)", status.id, status.state, status.done, status.total)
            self._queue.put_nowait(status.id)
        self._worker = asyncio.create_task(self._run(), name="jobs")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the running job's current batch, written to its shards (waiting up to
        `timeout_s` for that); the job stays 'running' and resumes at the next start."""
        self._stopping.set()
        if self._running is not None and not self._running.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._running), timeout_s)
            except asyncio.TimeoutError:
                log.warning("the running job did not reach the end of a batch within %.0f s; it resumes from its "
                            "last shard at the next start", timeout_s)
            except Exception:  # already logged and recorded by _run
                pass
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    def check(self, spec: JobSpec) -> None:
        """Refuse, before queueing, a job whose model does not exist (BundleError: 404) or whose
        source this server may not read (SourceForbidden: 403); reading the source is the job's work."""
        open_bundle(self.settings.artifacts_dir, spec.model, spec.model_version)
        if spec.source.startswith(INDEX_PREFIX):
            try:  # its current version only: the job itself reads the index
                self._indexes().current_version(spec.source[len(INDEX_PREFIX):])
            except BundleError as e:
                raise UnknownIndex(str(e)) from None
        else:
            check_source(spec.source, self.settings.data_root_paths())

    def submit(self, spec: JobSpec) -> JobStatus:
        """Queue a job, or JobsFull (a 429) when EMBEDSERVE_MAX_QUEUED_JOBS wait already: each costs
        CPU and a new index version, so the queue is bounded as the models' are."""
        limit = self.settings.max_queued_jobs
        if self.store.waiting() >= limit:  # before the model and source are checked: the cheap answer first
            raise self._full(limit)
        self.check(spec)
        try:
            status = self.store.create(spec, max_waiting=limit)
        except JobQueueFull:
            raise self._full(limit) from None
        self._queue.put_nowait(status.id)
        return status

    @staticmethod
    def _full(limit: int) -> JobsFull:
        return JobsFull(f"{limit} jobs are waiting to run, the limit (EMBEDSERVE_MAX_QUEUED_JOBS); retry once some "
                        "have run (GET /jobs says how many wait)")

    def cancel(self, job_id: str) -> JobStatus:
        return request_cancel(self.store, job_id)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job_id = await self._queue.get()
            try:  # a job cancelled while it was queued comes back from run_job as it is
                self._running = asyncio.ensure_future(asyncio.to_thread(self._run_job, job_id, loop))
                await asyncio.shield(self._running)  # a stop waits for the thread rather than abandoning it
            except Exception as e:  # a bug must fail one job, not the runner
                log.exception("job %s", job_id)
                self.store.update(job_id, state="failed", error=f"{type(e).__name__}: {e}")

    def _run_job(self, job_id: str, loop: asyncio.AbstractEventLoop) -> JobStatus:
        with claim(self.settings.artifacts_dir, job_id) as mine:
            if not mine:  # another worker of this artifacts folder runs it (both found it unfinished at start-up)
                log.info("job %s runs in another process", job_id)
                return self.store.get(job_id)
            _lower_priority(self.settings.job_nice)
            s = self.settings
            return run_job(job_id, self.store, s.artifacts_dir, s.runtime_config(), s.image_limits(), s.data_root_paths(),
                           should_stop=self._stopping.is_set, keep_previous=s.index_keep_previous,
                           publish=lambda index: self._publish(index, loop), indexes=self._indexes(), ray=s.ray_config())

    def _indexes(self) -> IndexStore:
        """Where jobs read and write indexes: the registry's store, FAISS folders or Milvus."""
        registry = self.registry()
        return registry.index_store if registry is not None else open_index_store(self.settings.artifacts_dir,
                                                                                  self.settings.index_config())

    def _publish(self, index: SearchIndex, loop: asyncio.AbstractEventLoop) -> None:
        """Serve the index version a job wrote (in the job's thread, before the job counts as
        succeeded): its model version is loaded first, then the index is published."""
        registry = self.registry()
        if registry is None:
            return
        registry.publish(index)
        unused = registry.unused_batchers()  # a model version the old index alone used
        loop.call_soon_threadsafe(retire_later, unused)
        log.info("now serving index %s %s", index.manifest.name, index.manifest.version)
