"""Batch re-embedding jobs: `POST /jobs` queues one (202), `GET /jobs` and `GET /jobs/{id}` show
their progress, `DELETE /jobs/{id}` cancels one (its partial work is discarded; the live index is
untouched). The work itself is serving.job_worker.JobRunner's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import Field, field_validator

from jobs.store import INDEX_PREFIX, MAX_BATCH_SIZE, JobSpec
from serving.errors import InvalidInput, NotReady, UnknownJob, error_responses, without_server_folders
from serving.job_worker import JobRunner
from serving.requests import JsonRequest, Name, plain_name

router = APIRouter(tags=["jobs"], responses=error_responses(503))
JobId = Annotated[Name, Path(description="the id POST /jobs answered")]


class JobRequest(JsonRequest):
    source: str = Field(max_length=4096, description="fashion-mnist:train|test, a folder or a .csv/.jsonl manifest under the server's "
                                    "data roots, or index:<name> (the items of an index, read again)")
    model: Name = Field(description="the image model to embed with")
    index: Name = Field(description="the index to write a new version of; it is served as soon as the job succeeds")
    model_version: Name | None = Field(None, description="the model's bundle version; its current one when omitted")
    batch_size: int = Field(256, ge=1, le=MAX_BATCH_SIZE, description="items per model call")

    @field_validator("source")
    @classmethod
    def index_source_names_an_index(cls, source: str) -> str:
        if source.startswith(INDEX_PREFIX):
            plain_name(source.removeprefix(INDEX_PREFIX))
        return source


def get_jobs(request: Request) -> JobRunner:
    runner = getattr(request.app.state, "jobs", None)
    if runner is None:
        raise NotReady("jobs are not running here: the server is starting, or its artifacts folder is not "
                       "writable (the server's log says which)")
    return runner


def _status(runner: JobRunner, job_id: str) -> dict[str, Any]:
    try:
        status = runner.store.get(job_id)
    except KeyError:
        raise UnknownJob(f"no job {job_id!r}; GET /jobs lists them") from None
    return _shown(runner, {**status.to_dict(), "errors": runner.store.errors(job_id, limit=20)})


def _shown(runner: JobRunner, status: dict[str, Any]) -> dict[str, Any]:
    """A job's status as a client sees it: its error texts without the server's folders, as every
    other error (serving.errors)."""
    settings = runner.settings
    shown = {**status, "error": status["error"] and without_server_folders(status["error"], settings)}
    if "errors" in status:
        shown["errors"] = [{**e, "error": without_server_folders(e["error"], settings)} for e in status["errors"]]
    return shown


@router.post("/jobs", status_code=202, summary="Queue a batch re-embedding job",
             responses=error_responses(404))
def create_job(body: JobRequest, runner: Annotated[JobRunner, Depends(get_jobs)]) -> JSONResponse:
    try:
        spec = JobSpec(**body.model_dump())
    except ValueError as e:  # the spec's own checks: an empty name, an index name that is a path
        raise InvalidInput(str(e)) from None
    status = runner.submit(spec)
    return JSONResponse(status_code=202, content=status.to_dict(), headers={"Location": f"/jobs/{status.id}"})


@router.get("/jobs", summary="Every job, oldest first, and how many wait to run")
def list_jobs(runner: Annotated[JobRunner, Depends(get_jobs)]) -> dict[str, Any]:
    jobs = [_shown(runner, s.to_dict()) for s in runner.store.list()]
    return {"jobs": jobs, "waiting": sum(j["state"] == "queued" for j in jobs),
            "max_waiting": runner.settings.max_queued_jobs}


@router.get("/jobs/{job_id}", summary="A job's progress, and the first errors of items it could not embed",
            responses=error_responses(404))
def show_job(job_id: JobId, runner: Annotated[JobRunner, Depends(get_jobs)]) -> dict[str, Any]:
    return _status(runner, job_id)


@router.delete("/jobs/{job_id}", summary="Cancel a job: its partial work is discarded, the live index untouched",
               responses=error_responses(404))
def cancel_job(job_id: JobId, runner: Annotated[JobRunner, Depends(get_jobs)]) -> dict[str, Any]:
    _status(runner, job_id)  # 404 for an unknown id
    runner.cancel(job_id)
    return _status(runner, job_id)
