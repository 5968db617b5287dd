"""The job store (services.jobs) and the schema's migrations, on SQLite and on PostgreSQL."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services import jobs
from services.errors import InvalidJob, JobAlreadyFinished, JobNotFound
from services.lifecycle import claim_next_job
from services.models import Base
from services.states import FoldStatus, JobStatus
from tests.helpers import small_job, store_job


def create(sessions, **overrides):
    with sessions() as session:
        return store_job(session, small_job(**overrides))


def test_migration_creates_exactly_the_models_schema(engine):
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_a_new_job_is_queued_with_pending_folds(sessions):
    job = create(sessions)
    with sessions() as session:
        stored = jobs.get_job(session=session, job_id=job.id)
        assert stored.status is JobStatus.QUEUED
        assert [(f.index, f.status) for f in stored.folds] == [(i, FoldStatus.PENDING) for i in range(3)]
        assert stored.spec["optimizer"] == {"name": "adam", "lr": 0.01, "beta1": 0.9,
                                            "beta2": 0.98, "eps": 1e-8,
                                            "bias_correction": True}


def test_more_stratified_folds_than_the_smallest_class_is_refused(sessions):
    spec = small_job(dataset={"name": "synthetic", "rows": 30, "classes": 5}, cv={"folds": 10})
    with sessions() as session, pytest.raises(InvalidJob, match="cv.folds"):
        store_job(session, spec)
    with sessions() as session:
        assert jobs.list_jobs(session=session)[1] == 0


def test_list_is_newest_first_filtered_and_paginated(sessions):
    created = [create(sessions, name=f"job-{i}") for i in range(5)]
    with sessions() as session:
        jobs.cancel_job(session=session, job_id=created[0].id)
        page, total = jobs.list_jobs(session=session, limit=2, offset=1)
        assert total == 5 and [j.name for j in page] == ["job-3", "job-2"]
        queued, total_queued = jobs.list_jobs(session=session, status=JobStatus.QUEUED)
        assert total_queued == 4 and "job-0" not in [j.name for j in queued]


def test_cancelling_a_queued_job_cancels_it_and_its_folds(sessions):
    job = create(sessions)
    with sessions() as session:
        cancelled = jobs.cancel_job(session=session, job_id=job.id)
        assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at is not None
        assert {f.status for f in cancelled.folds} == {FoldStatus.CANCELLED}
        with pytest.raises(JobAlreadyFinished):
            jobs.cancel_job(session=session, job_id=job.id)
        with pytest.raises(JobNotFound):
            jobs.get_job(session=session, job_id="no-such-job")


def test_cancelling_a_running_job_asks_its_dispatcher(sessions):
    job = create(sessions)
    with sessions() as session:
        assert claim_next_job(session, dispatcher_id="d1").id == job.id
        flagged = jobs.cancel_job(session=session, job_id=job.id)
        assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested
