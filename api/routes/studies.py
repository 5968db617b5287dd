"""/studies: submit a study (variants of one job on identical folds), read its
leaderboard, list and cancel studies, each scoped to the caller. A study's variants are
ordinary jobs: GET /jobs/{id} shows each."""
from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import OwnerDep, SessionDep, SettingsDep
from api.routes.jobs import IdempotencyKey, as_json, resolve_data
from api.schemas import StudyOut, StudyPage, study_out
from api.deps import mlflow_client
from services import figures, studies
from services.figures import STUDY_PLOTS
from services.capacity import check_runnable
from services.memory import check_memory, loading_of
from services.report import report_html
from services.results import mlflow_link
from services.study_spec import StudySpec, expand

router = APIRouter(prefix="/studies", tags=["studies"], responses={
    503: {"description": "the database cannot be reached; try again after Retry-After seconds"}})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StudyOut,
             responses={200: {"model": StudyOut, "description": "replayed: the study this key created"},
                        400: {"description": "the body is not JSON"},
                        413: {"description": "the body is over CROSSFOLD_MAX_BODY_BYTES"},
                        404: {"description": "the base job names a dataset you cannot see"},
                        409: {"description": "the Idempotency-Key was used with another body"},
                        429: {"description": "a limit of yours (queued jobs, submissions a minute) "
                                             "would be passed by the study's jobs; nothing was stored"}})
async def submit_study(request_body: StudySpec, request: Request, settings: SettingsDep, owner: OwnerDep,
                       idempotency_key: IdempotencyKey = None):
    variants = expand(request_body)
    data = await resolve_data(request, variants[0][1], owner)  # one dataset for all: checked by expand
    nodes = None if settings.cluster_can_grow else await anyio.to_thread.run_sync(
        request.app.state.known_nodes.current)  # read once for every variant
    resolved = []
    for label, spec in variants:
        loaded = replace(data, loading=loading_of(spec, data, settings.stream_above_bytes))
        # With refit, any variant may be the best one, refit on every row.
        check_memory(spec.model_copy(update={"refit": request_body.refit}), loaded, settings.max_fold_memory_bytes)
        if nodes is not None:
            check_runnable(spec, nodes)
        resolved.append((label, spec, loaded))
    submitted = studies.prepare_study(request_body, resolved, owner, idempotency_key)

    def store():
        with request.app.state.sessions() as session:
            study, created = studies.store_study(session, submitted, settings.default_limits())
            return study_out(study, studies.jobs_of(session, study), settings.mlflow_ui_url), created
    body, created = await anyio.to_thread.run_sync(store)
    request.app.state.database.succeeded()
    if created:
        request.app.state.wakeup.notify()  # a dispatcher in this process starts its jobs now
    return as_json(body, status.HTTP_201_CREATED if created else 200, headers={"Location": f"/studies/{body.id}"})


class StudyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0, le=1_000_000)


@router.get("", response_model=StudyPage)
def list_studies(session: SessionDep, settings: SettingsDep, owner: OwnerDep,
                 query: Annotated[StudyQuery, Query()]):
    page, total = studies.list_studies(session, owner, query.limit, query.offset)
    items = [study_out(s, studies.jobs_of(session, s), settings.mlflow_ui_url) for s in page]
    return as_json(StudyPage(items=items, total=total, limit=query.limit, offset=query.offset))


@router.get("/{study_id}", response_model=StudyOut, responses={404: {"description": "no such study"}})
def read_study(study_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep):
    study = studies.get_study(session, study_id, owner)
    return as_json(study_out(study, studies.jobs_of(session, study), settings.mlflow_ui_url))


@router.get("/{study_id}/plots/{name}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the figure, as PNG"},
                       404: {"description": "no such study, or no such plot"}})
def study_plot(study_id: str, name: str, request: Request, session: SessionDep, owner: OwnerDep):
    """validation_loss (each variant's mean curve, a band over folds), training_loss (raw
    against its average), fold_scores (the study's metric per fold per variant)."""
    if name not in STUDY_PLOTS:
        raise HTTPException(404, f"no plot {name!r}; a study has {', '.join(STUDY_PLOTS)}")
    study = studies.get_study(session, study_id, owner)
    image = figures.study_plot(name, study, studies.jobs_of(session, study), mlflow_client(request))
    return Response(image, media_type="image/png")


@router.get("/{study_id}/report", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {}}, "description": "one self-contained page"},
                       404: {"description": "no such study"}})
def study_report(study_id: str, request: Request, session: SessionDep, settings: SettingsDep, owner: OwnerDep):
    """The leaderboard, the statistics explained, the figures inline and links to the
    MLflow runs: for a reader who never opened MLflow."""
    study = studies.get_study(session, study_id, owner)
    jobs = studies.jobs_of(session, study)
    client = mlflow_client(request)
    images = {name: figures.study_plot(name, study, jobs, client) for name in STUDY_PLOTS}
    links = {job.variant: mlflow_link(settings.mlflow_ui_url, job.mlflow_experiment_id, job.mlflow_run_id)
             for job in jobs}
    body = study_out(study, jobs, settings.mlflow_ui_url).model_dump(mode="json")
    return HTMLResponse(report_html(body, images, links))


@router.post("/{study_id}/cancel", response_model=StudyOut, responses={404: {"description": "no such study"}})
def cancel_study(study_id: str, request: Request, session: SessionDep, settings: SettingsDep, owner: OwnerDep):
    study = studies.cancel_study(session, study_id, owner)
    request.app.state.wakeup.notify()
    return as_json(study_out(study, studies.jobs_of(session, study), settings.mlflow_ui_url))
