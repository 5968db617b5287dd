"""services.refits: what a refit job is made of, one per refitted job, and what its
registered model is named and described as. On both databases; the refit's run through
the whole service is in tests/test_end_to_end.py."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy.exc import IntegrityError

from services.models import Job
from services.refits import add_refit, cv_description, model_name, refit_epochs, refit_of
from services.spec import JobSpec
from services.states import FoldStatus, JobStatus
from tests.helpers import small_job, store_job


def finished(session, owner="local", **spec) -> Job:
    """A stored job whose three folds succeeded, at best epochs 4, 5 and 7."""
    job = session.get(Job, store_job(session, small_job(target_val_loss=0.3, pack_folds=True, **spec), owner).id)
    for fold, epoch in zip(job.folds, (4, 5, 7)):
        fold.status, fold.best_epoch = FoldStatus.SUCCEEDED, epoch
    job.status, job.summary = JobStatus.SUCCEEDED, {"test_accuracy_mean": 0.95, "test_accuracy_std": 0.02}
    session.commit()
    return job


def test_a_refit_trains_the_folds_mean_best_epoch_with_nothing_monitored(sessions):
    with sessions() as session:
        origin = finished(session, refit=True)
        refit = add_refit(session, origin)
        session.commit()
        spec = JobSpec.model_validate(refit.spec)
        assert spec.max_epochs == round((4 + 5 + 7) / 3) == 5
        assert spec.early_stopping is None and spec.target_val_loss is None
        assert not spec.refit and not spec.pack_folds  # one fold: nothing to pack, nothing to refit
        assert spec.optimizer == JobSpec.model_validate(origin.spec).optimizer
        assert [f.index for f in refit.folds] == [0] and refit.status is JobStatus.QUEUED
        assert (refit.owner, refit.name, refit.data, refit.refit_of) == (origin.owner, origin.name, origin.data,
                                                                         origin.id)
        assert add_refit(session, origin).id == refit.id  # one per job
        session.commit()
        assert session.query(Job).filter(Job.refit_of == origin.id).count() == 1
        session.refresh(origin)
        assert refit_of(session, origin).id == refit.id and origin.refits == [refit]


def test_only_succeeded_folds_count_toward_the_epochs():
    job = Job(folds=[])
    assert refit_epochs(job) == 1  # nothing to go by: at least one epoch
    from services.models import Fold
    job.folds = [Fold(index=0, status=FoldStatus.SUCCEEDED, best_epoch=3),
                 Fold(index=1, status=FoldStatus.FAILED, best_epoch=90),
                 Fold(index=2, status=FoldStatus.SUCCEEDED, best_epoch=4)]
    assert refit_epochs(job) == 4  # 3.5 rounds to even


def test_its_model_is_named_for_the_job_and_its_owner_and_described_by_the_cv_scores(sessions):
    with sessions() as session:
        local = add_refit(session, finished(session))
        shared = add_refit(session, finished(session, owner="ana"))
        session.commit()
        assert model_name(session, local) == "iris-test"
        assert model_name(session, shared) == "ana~iris-test"  # one registry: no owner's name holds "~"
        description = cv_description(session, local)
        assert "for 5 epochs" in description and "over 3 folds" in description
        assert "test_accuracy 0.95 ± 0.02" in description


def test_two_dispatchers_asking_for_one_refit_at_once_make_one(sessions, request):
    """Two sessions race to queue the refit of one job (a study's best variant, asked for
    by the two dispatchers that finished its last variants): one row, the same job for both."""
    if "postgresql" not in request.node.name:
        pytest.skip("concurrent dispatchers are a PostgreSQL deployment")
    with sessions() as session:
        origin_id = finished(session).id
    ready, made = threading.Barrier(2), []

    def ask() -> None:
        with sessions() as session:
            origin = session.get(Job, origin_id)
            ready.wait()
            made.append(add_refit(session, origin).id)
            session.commit()

    for _ in range(3):
        threads = [threading.Thread(target=ask) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    with sessions() as session:
        assert session.query(Job).filter(Job.refit_of == origin_id).count() == 1
    assert len(set(made)) == 1 and len(made) == 6


def test_the_database_holds_one_refit_a_job(sessions):
    with sessions() as session:
        origin = finished(session)
        add_refit(session, origin)
        session.commit()
        twin = Job(name="x", owner="local", spec=origin.spec, status=JobStatus.QUEUED, cancel_requested=False,
                   refit_of=origin.id)
        session.add(twin)
        with pytest.raises(IntegrityError):
            session.commit()
