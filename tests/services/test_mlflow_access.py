"""MLflow behind its basic-auth app, as docker-compose.yml runs it: a real `mlflow server
--app-name basic-auth`, the tracker logging in as its admin and granting each owner their
own experiments. Each test does what the review did: read and overwrite another owner's
runs and checkpoints, anonymously and as another owner."""
from __future__ import annotations

import pytest
import requests

from services.mlflow_access import MlflowAccess
from services.tracking import Tracker
from tests.helpers import free_port, mlflow_server as running_mlflow

ADMIN = ("crossfold", "admin-password-for-tests")
PASSWORDS = {"alice": "cf_alice-key-0123456789abcdef", "bob": "cf_bob-key-0123456789abcdef"}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-auth")
    config = folder / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                      f"database_uri = sqlite:///{folder / 'auth.db'}\n"
                      f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    with running_mlflow(folder, free_port(), auth_config=config) as url:
        yield url


@pytest.fixture
def tracker(mlflow_server, monkeypatch):
    """The dispatcher's tracker: MLflow's client reads the admin's login from these."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    access = MlflowAccess(mlflow_server)
    for owner, password in PASSWORDS.items():
        access.set_password(owner, password)  # as `crossfold keys create` does
    return Tracker(tracking_uri=mlflow_server, access=access)


def api(url: str, owner: str | None, path: str, method: str = "GET", **kwargs) -> requests.Response:
    auth = (owner, PASSWORDS[owner]) if owner else None
    return requests.request(method, f"{url}{path}", auth=auth, timeout=30, **kwargs)


def job_with_checkpoint(tracker: Tracker, owner: str, name: str) -> tuple[str, str, str]:
    experiment, parent, (child,) = tracker.start_job(job_id=f"{owner}-job", name=name, owner=owner,
                                                     params={}, n_folds=1)
    tracker.finish_fold(child, status="succeeded", test_metrics={"accuracy": 0.9},
                        checkpoint=f"{owner}'s weights".encode())
    return experiment, parent, child


def test_owners_with_one_job_name_get_an_experiment_each_and_see_only_their_own(mlflow_server, tracker):
    alice_experiment, _, alice_run = job_with_checkpoint(tracker, "alice", "shared-name")
    bob_experiment, _, bob_run = job_with_checkpoint(tracker, "bob", "shared-name")
    assert alice_experiment != bob_experiment
    search = "/api/2.0/mlflow/experiments/search?max_results=100"
    assert {e["name"] for e in api(mlflow_server, "bob", search).json()["experiments"]} == {"bob/shared-name"}
    assert api(mlflow_server, "bob", f"/api/2.0/mlflow/runs/get?run_id={alice_run}").status_code == 403
    assert api(mlflow_server, "bob", f"/api/2.0/mlflow/runs/get?run_id={bob_run}").status_code == 200
    checkpoint = f"/get-artifact?path=checkpoint/best.pt&run_uuid={alice_run}"
    assert api(mlflow_server, "bob", checkpoint).status_code == 403
    assert api(mlflow_server, "alice", checkpoint).content == b"alice's weights"


def test_nobody_anonymous_can_list_runs_or_overwrite_a_checkpoint(mlflow_server, tracker):
    experiment, _, run = job_with_checkpoint(tracker, "alice", "anonymous-check")
    assert api(mlflow_server, None, "/api/2.0/mlflow/experiments/search?max_results=10").status_code == 401
    target = f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/checkpoint/best.pt"
    assert api(mlflow_server, None, target, "PUT", data=b"evil").status_code == 401
    assert api(mlflow_server, "bob", target, "PUT", data=b"evil").status_code == 403
    checkpoint = f"/get-artifact?path=checkpoint/best.pt&run_uuid={run}"
    assert api(mlflow_server, "alice", checkpoint).content == b"alice's weights"


def test_a_deleted_experiment_is_restored_for_the_next_job(tracker):
    experiment, _, _ = job_with_checkpoint(tracker, "alice", "deleted-later")
    tracker.client.delete_experiment(experiment)
    again, parent, _ = tracker.start_job(job_id="next", name="deleted-later", owner="alice", params={}, n_folds=1,
                                         experiment=experiment)  # as the dispatcher recorded it
    assert again == experiment and tracker.client.get_experiment(again).lifecycle_stage == "active"
    assert tracker.client.get_run(parent).info.experiment_id == experiment


@pytest.fixture
def cli(mlflow_server, tmp_path, monkeypatch, capsys):
    """`crossfold keys ...`, run where the dispatcher runs (the database and MLflow's admin);
    returns (exit code, stdout, stderr)."""
    from api.cli import main
    from services.settings import get_settings
    monkeypatch.setenv("CROSSFOLD_DATABASE_URL", f"sqlite:///{tmp_path / 'crossfold.db'}")
    monkeypatch.setenv("CROSSFOLD_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("CROSSFOLD_MLFLOW_AUTH", "true")

    def run(*args: str) -> tuple[int, str, str]:
        get_settings.cache_clear()
        try:
            code = main(list(args))
        finally:
            get_settings.cache_clear()
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def experiments_seen(url: str, login: tuple[str, str]) -> requests.Response:
    return requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=100", auth=login, timeout=30)


def test_a_new_key_is_the_owners_mlflow_password(mlflow_server, tracker, cli):
    code, out, _ = cli("keys", "create", "--owner", "carol")
    key = out.strip()
    experiment, _, _ = job_with_checkpoint(tracker, "carol", "carols-job")
    search = experiments_seen(mlflow_server, ("carol", key))
    assert code == 0 and search.status_code == 200
    assert [e["experiment_id"] for e in search.json()["experiments"]] == [experiment]
    assert experiments_seen(mlflow_server, ("carol", key + "x")).status_code == 401


def test_a_revoked_or_expired_key_no_longer_logs_in_to_mlflow(mlflow_server, tracker, cli, tmp_path):
    from sqlalchemy import update

    from services.database import make_engine, session_factory
    from services.mlflow_logins import retire_refused_logins
    from services.models import ApiKey
    _, first, err = cli("keys", "create", "--owner", "dave")
    key_id = err.split("API key ")[1].split()[0]
    assert experiments_seen(mlflow_server, ("dave", first.strip())).status_code == 200
    assert cli("keys", "revoke", key_id)[0] == 0
    assert experiments_seen(mlflow_server, ("dave", first.strip())).status_code == 401
    _, second, _ = cli("keys", "create", "--owner", "dave")
    assert experiments_seen(mlflow_server, ("dave", second.strip())).status_code == 200
    engine = make_engine(f"sqlite:///{tmp_path / 'crossfold.db'}")
    with session_factory(engine)() as session:  # it expires: the dispatcher's sweep sees to MLflow
        session.execute(update(ApiKey).where(ApiKey.owner == "dave", ApiKey.revoked.is_(False))
                        .values(expires_at=ApiKey.created_at))
        session.commit()
        assert retire_refused_logins(session, tracker.access) == 1
    assert experiments_seen(mlflow_server, ("dave", second.strip())).status_code == 401
    engine.dispose()


def test_no_owner_can_take_the_mlflow_admins_name(mlflow_server, tracker, cli):
    code, out, err = cli("keys", "create", "--owner", "crossfold")
    assert code == 2 and not out and "reserved" in err
    assert experiments_seen(mlflow_server, ADMIN).status_code == 200  # its password unchanged


def test_an_experiment_someone_else_made_under_an_owners_name_is_not_used(mlflow_server, tracker):
    """Bob, a plain MLflow user, makes `alice/quarterly` first, to read what lands in it."""
    made = requests.post(f"{mlflow_server}/api/2.0/mlflow/experiments/create", json={"name": "alice/quarterly"},
                         auth=("bob", PASSWORDS["bob"]), timeout=30)
    assert made.status_code == 200
    experiment, _, run = job_with_checkpoint(tracker, "alice", "quarterly")
    assert experiment != made.json()["experiment_id"]
    assert tracker.client.get_experiment(experiment).name.startswith("alice/quarterly (")
    assert api(mlflow_server, "bob", f"/api/2.0/mlflow/runs/get?run_id={run}").status_code == 403
    assert api(mlflow_server, "alice", f"/api/2.0/mlflow/runs/get?run_id={run}").status_code == 200
    again, _, _ = tracker.start_job(job_id="next", name="quarterly", owner="alice", params={}, n_folds=1,
                                    experiment=experiment)  # the one crossfold recorded
    assert again == experiment
