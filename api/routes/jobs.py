"""/jobs: submit, read, list and cancel training jobs."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api.deps import SessionDep, SettingsDep
from api.schemas import JobOut, JobPage, job_out
from services import jobs
from services.spec import JobSpec
from services.states import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut)
def submit_job(spec: JobSpec, session: SessionDep, settings: SettingsDep, response: Response):
    job = jobs.create_job(session=session, spec=spec)
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_out(job, settings.mlflow_ui_url)


@router.get("", response_model=JobPage)
def list_jobs(session: SessionDep, settings: SettingsDep,
              status_: Annotated[JobStatus | None, Query(alias="status")] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              offset: Annotated[int, Query(ge=0)] = 0):
    page, total = jobs.list_jobs(session=session, status=status_, limit=limit, offset=offset)
    return JobPage(items=[job_out(j, settings.mlflow_ui_url) for j in page],
                   total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut)
def read_job(job_id: str, session: SessionDep, settings: SettingsDep):
    return job_out(jobs.get_job(session=session, job_id=job_id), settings.mlflow_ui_url)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep, settings: SettingsDep):
    return job_out(jobs.cancel_job(session=session, job_id=job_id), settings.mlflow_ui_url)
