"""Driving a job from a test: cancel it from inside its own run, or wait for it over HTTP (one
helper for the runner tests, local and on Ray, and for the jobs and search router tests)."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi.testclient import TestClient

from jobs.run import request_cancel
from jobs.store import JobStore


def cancel_at_check(store: JobStore, job_id: str, check: int = 2) -> Callable[[], bool]:
    """A `should_stop` for run_job that asks to cancel `job_id` at its `check`-th call (one call per
    batch), as a client would mid-run, and never stops the process."""
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        if len(calls) == check:
            request_cancel(store, job_id)
        return False

    return should_stop


def wait_for_job(client: TestClient, job_id: str, timeout_s: float = 120) -> dict:
    """GET /jobs/{job_id} until the job has ended; its last status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(f"/jobs/{job_id}").json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {status}")
