"""A study in MLflow: one experiment per study (its jobs share the study's name), with a
study run that each variant's job run is nested under, and which receives, once every
variant has ended, the leaderboard (JSON), the figures (PNG) and the report (HTML)."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from datetime import datetime, timezone

from sqlalchemy import select, true, update
from sqlalchemy.orm import Session

from services.figures import STUDY_PLOTS, study_plot
from services.leaderboard import leaderboard
from services.models import Job, Study
from services.refits import add_refit
from services.report import report_html
from services.results import mlflow_link
from services.settings import get_settings
from services.states import FINISHED_JOB, JobStatus

UNFINISHED_JOB = [status for status in JobStatus if status not in FINISHED_JOB]
from services.studies import jobs_of, summary
from services.tracking import END_STATUS, Tracker
from services.wakeups import announce

log = logging.getLogger(__name__)


def study_run_of(session: Session, tracker: Tracker, job: Job, experiment: str | None) -> tuple[str, str]:
    """(experiment, run) of the job's study, made by the first of its jobs to start. Two
    dispatchers starting two variants at once may both make one: the first to record
    its run wins, and the other's is deleted."""
    study = session.get(Study, job.study_id)
    if study.mlflow_run_id is None:
        experiment = tracker.experiment_id(study.owner, study.name, experiment)
        run = tracker.client.create_run(experiment, run_name=f"study {study.name}", tags={
            "crossfold.study_id": study.id, "crossfold.kind": "study"}).info.run_id
        won = session.execute(update(Study).where(Study.id == study.id, Study.mlflow_run_id.is_(None))
                              .values(mlflow_run_id=run, mlflow_experiment_id=experiment)).rowcount
        session.commit()
        if not won:
            tracker.client.delete_run(run)
        session.refresh(study)
    return study.mlflow_experiment_id, study.mlflow_run_id


def finish_if_done(session: Session, tracker: Tracker, study_id: str) -> None:
    """Once every variant has ended: the leaderboard, figures and report on the study run,
    which ends as the study did. MLflow failing here loses nothing the API shows (it
    computes all of it from the database); the run stays open, and a warning says so."""
    study = session.get(Study, study_id)
    jobs = jobs_of(session, study)
    if study.closed_at is not None or any(job.status not in FINISHED_JOB for job in jobs):
        return
    if study.spec["request"].get("refit") and not study.cancel_requested:
        refit_best(session, study, jobs)
    if study.mlflow_run_id is None:
        return
    try:
        write_results(tracker, study, jobs)
    except Exception as error:
        log.warning("could not write study %s's results to MLflow: %s", study.id, error)
        return
    study.closed_at = datetime.now(timezone.utc)
    session.commit()


def close_ended_studies(session: Session, tracker: Tracker, skip: set[str] = frozenset()) -> list[str]:
    """Studies whose variants all ended without a dispatcher finishing the last one: the
    API cancels queued jobs itself, and a dispatcher may have died in between, or MLflow
    been down. Their runs get their results now, the oldest first, a few at a time; the
    ids of those that failed (not `skip`ped next time for a while: services.sweeps)."""
    unfinished = select(Job.id).where(Job.study_id == Study.id, Job.status.in_(UNFINISHED_JOB))
    ended = session.scalars(select(Study.id).where(
        Study.mlflow_run_id.is_not(None), Study.closed_at.is_(None), ~unfinished.exists(),
        Study.id.not_in(skip) if skip else true()).order_by(Study.created_at).limit(5)).all()
    failed = []
    for study_id in ended:
        try:
            finish_if_done(session, tracker, study_id)
        except Exception as error:  # one study's trouble must not hold up the others
            session.rollback()
            log.warning("could not close study %s: %s", study_id, error)
        if session.get(Study, study_id).closed_at is None:
            failed.append(study_id)
    return failed


def refit_best(session: Session, study: Study, jobs: list[Job]) -> None:
    """Queue the refit of the study's best variant (none when no variant succeeded). The
    study's row is locked first (PostgreSQL): a cancel of the study committed meanwhile
    is seen, or waits for the refit to be committed and then cancels it too."""
    session.refresh(study, with_for_update=True)
    if study.cancel_requested:
        session.commit()
        return
    best = leaderboard(study, jobs)["best"]
    job = next((job for job in jobs if job.variant == best), None)
    if job is not None:
        add_refit(session, job)
        announce(session)
    session.commit()
    if job is not None:
        session.expire(job, ["refits"])  # read again: the results written next name the refit


def write_results(tracker: Tracker, study: Study, jobs: list[Job]) -> None:
    ui_url = get_settings().mlflow_ui_url
    board = summary(study, jobs, ui_url)
    images = {name: study_plot(name, study, jobs, tracker.client) for name in STUDY_PLOTS}
    links = {job.variant: mlflow_link(ui_url, job.mlflow_experiment_id, job.mlflow_run_id) for job in jobs}
    run = study.mlflow_run_id
    tracker.client.log_dict(run, board, "leaderboard.json")
    tracker.client.log_text(run, report_html(board, images, links), "report.html")
    with tempfile.TemporaryDirectory() as folder:
        for name, png in images.items():
            path = Path(folder) / f"{name}.png"
            path.write_bytes(png)
            tracker.client.log_artifact(run, str(path), artifact_path="plots")
    best = next((v for v in board["variants"] if v["rank"] == 1), None)
    if best is not None:
        score = best["test"][board["metric"]]
        tracker.log_values(run, {f"best_test_{board['metric']}_mean": score["mean"]})
        tracker.client.set_tag(run, "crossfold.best_variant", best["label"])
    status = board["status"] if board["status"] in END_STATUS else "failed"
    tracker.client.set_terminated(run, status=END_STATUS[status])
