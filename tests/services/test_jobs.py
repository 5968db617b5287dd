"""The job store (services.jobs) and the schema's migrations, on SQLite and on PostgreSQL."""
from datetime import datetime, timezone

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


def test_the_migration_keeps_only_what_a_stored_dataset_spec_takes(database_url):
    """Jobs stored before 0003 carry the generated datasets' sizes on bundled datasets
    (digits with rows 1000, features 20...): they are taken out, and the idempotency hash
    recomputed, so that a replay of the same request still finds its job."""
    import uuid

    from sqlalchemy import JSON, column, insert, table

    from services.database import make_engine, upgrade_schema
    from services.models import Job
    from services.spec import JobSpec
    from services.submissions import request_hash
    engine = make_engine(database_url)
    upgrade_schema(engine, "0002")
    old_sizes = {"rows": 1000, "features": 20, "classes": 2, "seed": 0}
    stored = {"digits": {"name": "digits", **old_sizes},
              "synthetic_regression": {"name": "synthetic_regression", **old_sizes},
              "synthetic": {"name": "synthetic", **old_sizes}}
    normalized = JobSpec.model_validate(small_job()).model_dump(mode="json")  # as specs are stored
    # The table as 0002 had it: the model's columns of later revisions are not there yet.
    columns = ["id", "name", "status", "cancel_requested", "request_hash", "idempotency_key", "owner",
               "created_at"]
    old_jobs = table("jobs", column("spec", JSON), *map(column, columns))
    with engine.begin() as connection:
        for name, dataset in stored.items():
            connection.execute(insert(old_jobs).values(
                id=str(uuid.uuid4()), name=name, spec={**normalized, "dataset": dataset},
                status="queued", cancel_requested=False, request_hash="old",
                idempotency_key=name, owner="local", created_at=datetime.now(timezone.utc)))
    upgrade_schema(engine)
    with engine.connect() as connection:
        rows = {row.name: row for row in connection.execute(Job.__table__.select())}
    assert rows["digits"].spec["dataset"] == {"name": "digits"}
    assert rows["synthetic_regression"].spec["dataset"] == {
        "name": "synthetic_regression", "rows": 1000, "features": 20, "seed": 0}
    assert rows["synthetic"].spec["dataset"] == stored["synthetic"] and rows["synthetic"].request_hash == "old"
    for name in ("digits", "synthetic_regression"):
        assert rows[name].request_hash == request_hash(JobSpec.model_validate(rows[name].spec))
    engine.dispose()


def downgrade_schema(engine, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from services.database import MIGRATIONS
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def test_the_priority_migration_goes_up_and_down_keeping_jobs_and_their_replays(database_url):
    """0006 gives stored jobs priority 0, in the column and in the spec, with the request
    hash recomputed so that the same request sent again still finds its job; going down
    takes the field out of the spec again (the older code refuses it) and keeps the folds,
    down to 0004 too."""
    import hashlib
    import json

    from sqlalchemy import JSON, column, func, insert, inspect, select, table

    from services.database import make_engine, upgrade_schema
    from services.models import Fold
    from services.spec import JobSpec
    from services.submissions import request_hash
    engine = make_engine(database_url)
    upgrade_schema(engine, "0005")
    before = {k: v for k, v in JobSpec.model_validate(small_job()).model_dump(mode="json").items()
              if k != "priority"}  # a spec as 0005's code stored it
    old_hash = hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    old_jobs = table("jobs", column("spec", JSON), *map(column, [
        "id", "name", "status", "cancel_requested", "request_hash", "idempotency_key", "owner", "created_at"]))
    with engine.begin() as connection:
        connection.execute(insert(old_jobs).values(
            id="old", name="old", spec=before, status="queued", cancel_requested=False,
            request_hash=old_hash, idempotency_key="k", owner="local", created_at=datetime.now(timezone.utc)))
        connection.execute(insert(Fold.__table__).values(job_id="old", fold_index=0, status="pending",
                                                         attempts=0, epoch=0))
    upgrade_schema(engine, "0006")
    with engine.connect() as connection:
        job = connection.execute(select(old_jobs.c.spec, old_jobs.c.request_hash, column("priority"))).one()
    assert job.priority == 0 and job.spec == {**before, "priority": 0}
    assert job.request_hash == request_hash(JobSpec.model_validate(before))  # what a replay computes now
    downgrade_schema(engine, "0005")
    with engine.connect() as connection:
        assert "priority" not in {c["name"] for c in inspect(connection).get_columns("jobs")}
        assert "owner_turns" not in inspect(connection).get_table_names()
        spec, stored_hash = connection.execute(select(old_jobs.c.spec, old_jobs.c.request_hash)).one()
        assert (spec, stored_hash) == (before, old_hash)
        assert connection.execute(select(func.count()).select_from(Fold.__table__)).scalar() == 1
    downgrade_schema(engine, "0004")  # 0005 takes its columns out of jobs and keeps the folds too
    with engine.connect() as connection:
        assert "start_attempts" not in {c["name"] for c in inspect(connection).get_columns("jobs")}
        assert connection.execute(select(func.count()).select_from(Fold.__table__)).scalar() == 1
    upgrade_schema(engine)  # and up again, to the newest
    engine.dispose()
