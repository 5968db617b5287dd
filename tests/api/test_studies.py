"""POST /studies and the rest of /studies against a real database (no dispatcher runs
here: the variants stay queued; tests/test_studies.py runs a study to its end)."""
from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from tests.helpers import small_job

STUDY = {"name": "optimizers", "base": small_job(max_epochs=5),
         "variants": [{"label": "sgd", "optimizer": {"name": "sgd", "lr": 0.1}},
                      {"label": "momentum", "optimizer": {"name": "momentum", "lr": 0.1}},
                      {"label": "adam", "optimizer.lr": 0.005}],
         "target_val_loss": 0.4}


def test_a_study_stores_its_variants_as_queued_jobs_on_identical_folds(client):
    answer = client.post("/studies", json=STUDY)
    assert answer.status_code == 201, answer.text
    study = answer.json()
    assert answer.headers["location"] == f"/studies/{study['id']}"
    assert (study["status"], study["metric"], study["higher_is_better"], study["rope"]) == \
        ("queued", "accuracy", True, 0.01)
    assert [v["label"] for v in study["variants"]] == ["sgd", "momentum", "adam"]
    assert all(v["status"] == "queued" and v["rank"] is None for v in study["variants"])
    jobs = [client.get(f"/jobs/{v['job_id']}").json() for v in study["variants"]]
    assert [(j["study_id"], j["variant"], j["name"]) for j in jobs] == \
        [(study["id"], label, "optimizers") for label in ("sgd", "momentum", "adam")]
    assert [j["spec"]["optimizer"]["name"] for j in jobs] == ["sgd", "momentum", "adam"]
    assert all(j["spec"]["target_val_loss"] == 0.4 for j in jobs)
    # Identical folds: one dataset (one digest, one stored file) and one cv for every variant.
    assert len({j["dataset_id"] for j in jobs}) == 1 and len({str(j["spec"]["cv"]) for j in jobs}) == 1
    assert client.get(f"/studies/{study['id']}").json()["variants"] == study["variants"]
    listed = client.get("/studies").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == study["id"]


def test_cancelling_a_study_cancels_every_variant(client):
    study = client.post("/studies", json=STUDY).json()
    cancelled = client.post(f"/studies/{study['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["cancel_requested"]
    assert {client.get(f"/jobs/{v['job_id']}").json()["status"] for v in study["variants"]} == {"cancelled"}
    assert client.post("/studies/no-such-study/cancel").status_code == 404


def test_bad_studies_are_refused_with_422_naming_the_field_and_store_nothing(client):
    bad = [({**STUDY, "variants": [{"label": "iris too", "dataset": "wine"}]}, ["body", "variants", "0", "dataset"]),
           ({**STUDY, "variants": None, "grid": {"optimizer.lrr": [0.1, 0.2]}}, ["body", "grid", "optimizer", "lrr"]),
           ({**STUDY, "variants": None, "grid": {"max_epochs": list(range(1, 40))}}, ["body", "grid"]),
           ({**STUDY, "metric": "r2"}, ["body", "metric"]),
           ({**STUDY, "variants": [{"label": str(i)} for i in range(40)]}, ["body", "variants"])]
    for body, loc in bad:
        answer = client.post("/studies", json=body)
        assert answer.status_code == 422, (loc, answer.text)
        assert answer.json()["detail"][0]["loc"] == loc, answer.json()
    assert client.get("/studies").json()["total"] == 0 and client.get("/jobs").json()["total"] == 0


def test_the_same_idempotency_key_returns_the_same_study_and_another_body_conflicts(client):
    first = client.post("/studies", json=STUDY, headers={"Idempotency-Key": "s-1"})
    again = client.post("/studies", json=STUDY, headers={"Idempotency-Key": "s-1"})
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    other = client.post("/studies", json={**STUDY, "rope": 0.05}, headers={"Idempotency-Key": "s-1"})
    assert other.status_code == 409
    assert client.get("/jobs").json()["total"] == 3


def test_a_study_over_the_owners_queue_limit_is_refused_whole(settings, sessions):
    with TestClient(create_app(settings.model_copy(update={"max_queued_jobs": 2}), sessions)) as client:
        answer = client.post("/studies", json=STUDY)
        assert answer.status_code == 429 and "CROSSFOLD_MAX_QUEUED_JOBS" in answer.json()["detail"]
        assert client.get("/jobs").json()["total"] == 0 and client.get("/studies").json()["total"] == 0


def test_another_owner_does_not_see_a_study(settings, sessions):
    from services.auth import create_key
    with sessions() as session:
        alice, bob = create_key(session=session, owner="alice"), create_key(session=session, owner="bob")
    with TestClient(create_app(settings.model_copy(update={"auth_required": True}), sessions)) as client:
        study = client.post("/studies", json=STUDY, headers={"Authorization": f"Bearer {alice}"}).json()
        as_bob = {"Authorization": f"Bearer {bob}"}
        assert client.get(f"/studies/{study['id']}", headers=as_bob).status_code == 404
        assert client.post(f"/studies/{study['id']}/cancel", headers=as_bob).status_code == 404
        assert client.get("/studies", headers=as_bob).json()["total"] == 0


def test_a_job_without_early_stopping_on_a_regression_dataset_is_accepted(client):
    """Found by the fuzzer: `"early_stopping": null` on regression data was a 500."""
    answer = client.post("/jobs", json={"name": "budget", "dataset": "diabetes", "early_stopping": None,
                                        "optimizer": {"name": "sgd", "lr": 0.01}})
    assert answer.status_code == 201, answer.text
    assert answer.json()["spec"]["early_stopping"] is None


def test_a_study_cancelled_with_its_variants_queued_still_gets_its_mlflow_run_closed(client, sessions, tmp_path):
    """The API cancels queued variants itself, so no dispatcher finishes the study's last
    job: its sweep (services.study_runs.close_ended_studies) closes the study's run, with
    the results. (Here its run is made as the first variant to start would make it.)"""
    from services.models import Study
    from services.study_runs import close_ended_studies
    from services.tracking import Tracker

    tracker = Tracker(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifacts_dir=tmp_path / "artifacts")
    study = client.post("/studies", json={**STUDY, "refit": True}).json()
    run = tracker.client.create_run(tracker.experiment_id("local", "optimizers")).info.run_id
    with sessions() as session:
        session.get(Study, study["id"]).mlflow_run_id = run
        session.commit()
        close_ended_studies(session, tracker)  # still queued: nothing to close
        assert session.get(Study, study["id"]).closed_at is None
    assert client.post(f"/studies/{study['id']}/cancel").json()["status"] == "cancelled"
    with sessions() as session:
        close_ended_studies(session, tracker)
        assert session.get(Study, study["id"]).closed_at is not None
    closed = tracker.client.get_run(run)
    assert closed.info.status == "KILLED"
    assert {"leaderboard.json", "report.html"} <= {a.path for a in tracker.client.list_artifacts(run)}
    assert client.get(f"/studies/{study['id']}").json()["refit"] is None  # a cancelled study refits nothing
    assert client.get("/jobs").json()["total"] == 3
