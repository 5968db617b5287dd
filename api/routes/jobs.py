"""/jobs: submit, read, list and cancel training jobs, each scoped to the caller.

Handlers build their JSON response themselves (response_model is there for the docs):
FastAPI would otherwise validate the returned model in a worker thread after the
handler, while the request still holds its database connection, and under load every
worker thread can be waiting for a connection: a deadlock until the pool times out.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.batching import batcher_for
from api.deps import OwnerDep, SessionDep, SettingsDep, mlflow_client
from api.schemas import JobOut, JobPage, job_out
from services import figures, jobs
from services.figures import JOB_PLOTS
from services.capacity import check_runnable
from services.job_data import GENERATED, JobData, resolve
from services.memory import check_memory, loading_of
from services.spec import JobSpec
from services.submissions import prepare
from services.states import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], responses={
    503: {"description": "the database cannot be reached; try again after Retry-After seconds"}})
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=200, description=(
    "repeat a submission safely: the same key and body return the same job"))]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut,
             responses={200: {"model": JobOut, "description": "replayed: the job this key created"},
                        400: {"description": "the body is not JSON"},
                        404: {"description": "the job names a dataset you cannot see"},
                        409: {"description": "the Idempotency-Key was used with another body"},
                        413: {"description": "the body is over CROSSFOLD_MAX_BODY_BYTES"},
                        429: {"description": "a limit of yours (queued jobs, submissions a minute) "
                                             "was reached; try again after Retry-After seconds"}})
async def submit_job(spec: JobSpec, request: Request, settings: SettingsDep, owner: OwnerDep,
                     idempotency_key: IdempotencyKey = None) -> JSONResponse:
    data = await resolve_data(request, spec, owner)
    data = replace(data, loading=loading_of(spec, data, settings.stream_above_bytes))
    check_memory(spec, data, settings.max_fold_memory_bytes)
    if not settings.cluster_can_grow:  # else such a job waits for nodes (services.capacity)
        check_runnable(spec, await anyio.to_thread.run_sync(request.app.state.known_nodes.current))
    # Stored together with whatever else is being submitted (api/batching.py).
    job, created = await batcher_for(request.app).submit(prepare(spec, data, owner, idempotency_key))
    request.app.state.database.succeeded()  # stored: say so if it had been unreachable
    if created:
        request.app.state.wakeup.notify()  # a dispatcher in this process starts it now
    return as_json(job_out(job, settings.mlflow_ui_url), status.HTTP_201_CREATED if created else 200,
                   headers={"Location": f"/jobs/{job.id}"})


async def resolve_data(request: Request, spec: JobSpec, owner: str) -> JobData:
    """The job's data, checked (services.job_data). Generated data and a bundled dataset
    named as such need nothing more (the app holds the bundled datasets' descriptions); a
    stored one is read in a worker thread, on a session of its own that gives its
    connection back at once (not held while the submission waits for its batch)."""
    bundled = request.app.state.bundled
    if not spec.dataset.stored and spec.dataset.name in (*GENERATED, *bundled):
        return resolve(spec, session=None, owner=owner, bundled=bundled)

    def read() -> JobData:
        with request.app.state.sessions() as session:
            return resolve(spec, session=session, owner=owner)
    return await anyio.to_thread.run_sync(read)


class JobQuery(BaseModel):
    """GET /jobs's query; an unknown parameter (a typo such as ?stauts=) is refused."""
    model_config = ConfigDict(extra="forbid")
    status: JobStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0, le=1_000_000)


@router.get("", response_model=JobPage)
def list_jobs(session: SessionDep, settings: SettingsDep, owner: OwnerDep,
              query: Annotated[JobQuery, Query()]):
    page, total = jobs.list_jobs(session=session, owner=owner, status=query.status, limit=query.limit,
                                 offset=query.offset)
    return as_json(JobPage(items=[job_out(j, settings.mlflow_ui_url) for j in page],
                           total=total, limit=query.limit, offset=query.offset))


@router.get("/{job_id}", response_model=JobOut, responses={404: {"description": "no such job"}})
def read_job(job_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep):
    return as_json(job_out(jobs.get_job(session=session, job_id=job_id, owner=owner),
                           settings.mlflow_ui_url))


@router.post("/{job_id}/cancel", response_model=JobOut,
             responses={404: {"description": "no such job"}, 409: {"description": "already finished"}})
def cancel_job(job_id: str, request: Request, session: SessionDep, settings: SettingsDep, owner: OwnerDep):
    job = jobs.cancel_job(session=session, job_id=job_id, owner=owner)
    request.app.state.wakeup.notify()  # a dispatcher in this process stops it now
    return as_json(job_out(job, settings.mlflow_ui_url))


@router.get("/{job_id}/plots/{name}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the figure, as PNG"},
                       404: {"description": "no such job, or no such plot"}})
def job_plot(job_id: str, name: str, request: Request, session: SessionDep, owner: OwnerDep):
    """learning_curves: every fold's training and validation loss, its best epoch marked."""
    if name not in JOB_PLOTS:
        raise HTTPException(404, f"no plot {name!r}; a job has {', '.join(JOB_PLOTS)}")
    job = jobs.get_job(session=session, job_id=job_id, owner=owner)
    return Response(figures.job_plot(name, job, mlflow_client(request)), media_type="image/png")


def as_json(body: BaseModel, status_code: int = 200, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)
