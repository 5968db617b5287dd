"""`crossfold serve`, as a person starts it: a real process with the API, the
dispatcher and the MLflow UI, joined to the test session's Ray (or, where the test is
about Ray's processes, starting its own)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.watchdog import alive, descendants, end_all
from tests.helpers import free_port, needs_chromium, render, small_job, wait_for


def start_serve(data_dir: Path, api_port: int, ui_port: int, ray_address: str = "") -> subprocess.Popen:
    env = {**os.environ, "CROSSFOLD_DATA_DIR": str(data_dir), "CROSSFOLD_API_PORT": str(api_port),
           "CROSSFOLD_MLFLOW_UI_URL": f"http://127.0.0.1:{ui_port}", "CROSSFOLD_RAY_ADDRESS": ray_address}
    return subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def served(ray_session, tmp_path):
    api_port, ui_port = free_port(), free_port()
    process = start_serve(tmp_path / "data", api_port, ui_port, ray_session.get_runtime_context().gcs_address)
    yield process, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}"
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # a clean stop: the service takes its children along
        process.wait(timeout=60)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@needs_chromium
def test_mlflow_links_open_the_model_training_view_in_a_real_browser(served, tmp_path):
    """MLflow 3 opens experiments in its GenAI view (traces, evaluations, judges) unless
    told otherwise: every link crossfold gives must land in the runs view."""
    process, api, ui = served
    wait_for(lambda: answers(f"{api}/healthz") or process.poll() is not None, 120, 0.5)
    job = httpx.post(f"{api}/jobs", json=small_job(max_epochs=2)).json()
    done = wait_for(lambda: (j := httpx.get(f"{api}/jobs/{job['id']}").json())["status"]
                    in ("succeeded", "failed") and j, 120)
    wait_for(lambda: answers(ui), 60, 0.5)
    pages = {"job": done["mlflow_url"], "fold": done["folds"][0]["mlflow_url"],
             "experiment": done["mlflow_experiment_url"]}
    doms = {name: render(url, screenshot=tmp_path / f"mlflow-{name}.png") for name, url in pages.items()}
    for name, dom in doms.items():
        assert ">Model registry<" in dom, name  # the model-training view's side bar
        assert ">Evaluations<" not in dom and ">Judges<" not in dom, name  # the GenAI view's
    assert "<strong>4</strong> matching runs" in doms["experiment"]  # the runs table: the job and its folds
    assert ">0 · fold of iris-test<" in doms["fold"]  # the index first
    shown = re.search(r">iris \(([0-9a-f]+)\)<", doms["fold"])  # the data the fold trained on
    iris = [d for d in httpx.get(f"{api}/datasets").json()["items"] if d["name"] == "iris"]
    assert shown and iris[0]["digest"].startswith(shown.group(1))
    # A study: its own run, its variants' job runs beneath it, its results on it.
    study = httpx.post(f"{api}/studies", json={"name": "ui-study", "base": small_job(max_epochs=2), "variants": [
        {"label": "adam"}, {"label": "sgd", "optimizer": {"name": "sgd", "lr": 0.05}}]}).json()
    ended = wait_for(lambda: (s := httpx.get(f"{api}/studies/{study['id']}").json())["status"]
                     in ("succeeded", "failed") and s, 120)
    page = render(ended["mlflow_url"], screenshot=tmp_path / "mlflow-study.png")
    assert ">study ui-study<" in page and "Child runs" in page and ">adam<" in page and ">sgd<" in page
    assert "crossfold.best_variant" in page and ended["best"] in ("adam", "sgd")
    files = render(ended["mlflow_url"].replace("?", "/artifacts?"))
    assert ">leaderboard.json<" in files and ">report.html<" in files and ">plots<" in files


def experiments_in(ui: str) -> set[str]:
    found = httpx.post(f"{ui}/api/2.0/mlflow/experiments/search", json={"max_results": 100}, timeout=60).json()
    return {e["name"] for e in found.get("experiments", [])}


def test_serve_runs_a_job_survives_kill_9_cleanly_and_stops_on_sigterm(ray_session, tmp_path):
    """A job runs, its runs show in the MLflow UI. Then kill -9 mid-job: its own local Ray
    (agents included) and the MLflow UI end with it, and a service restarted on the same
    ports with another data folder shows that store, and stops cleanly on SIGTERM, its
    MLflow UI with it. (Two service starts, not three: each costs seconds of imports; the
    second joins the test session's Ray.)"""
    api_port, ui_port = free_port(), free_port()
    api, ui = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}"
    first = start_serve(tmp_path / "first", api_port, ui_port)  # no Ray address: it starts its own
    try:
        wait_for(lambda: (answers(f"{api}/healthz") and answers(f"{ui}/health")) or first.poll() is not None,
                 180, 0.5)
        assert first.poll() is None, first.stdout.read()
        # The UI's first look at its store is slow (it opens and checks it): made while the
        # machine is idle, not while the job trains, it takes seconds instead of half a minute.
        assert experiments_in(ui) == {"Default"}
        long_job = small_job(name="killed-mid-job", max_epochs=5000, early_stopping={"patience": 1000})
        job = httpx.post(f"{api}/jobs", json=long_job).json()
        job_id = job["id"]
        wait_for(lambda: any(f["epoch"] > 0 for f in httpx.get(f"{api}/jobs/{job_id}").json()["folds"]), 120)
        assert_its_runs_show_in_the_ui(ui, httpx.get(f"{api}/jobs/{job_id}").json())
        children = descendants(first.pid)
        commands = {p: Path(f"/proc/{p[0]}/cmdline").read_bytes() for p in children}
        assert any(b"mlflow" in c for c in commands.values()) and any(b"raylet" in c for c in commands.values())
        assert any(b"ray::" in c for c in commands.values())  # its fold tasks, agents and board
    finally:
        first.kill()
        first.wait()
    try:
        wait_for(lambda: not any(map(alive, children)), 30, 0.5)  # every child, Ray's agents included
    except AssertionError:
        raise AssertionError(f"still running: {[commands[p][:80] for p in children if alive(p)]}") from None
    finally:
        end_all(children, grace_s=0)  # should the watchdog have failed, leave no orphan to later tests
    second = start_serve(tmp_path / "second", api_port, ui_port, ray_session.get_runtime_context().gcs_address)
    try:
        wait_for(lambda: answers(f"{api}/healthz") and answers(f"{ui}/health"), 180, 0.5)
        assert httpx.get(f"{api}/jobs/{job_id}").status_code == 404  # the second store's API
        assert "local/killed-mid-job" not in experiments_in(ui)  # and the second store's UI
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    time.sleep(1)
    assert not answers(ui), "the MLflow UI outlived the service"


def assert_its_runs_show_in_the_ui(ui: str, job: dict) -> None:
    # Its first search is slow on a busy machine (MLflow's server imports as it goes).
    runs = httpx.post(f"{ui}/api/2.0/mlflow/runs/search", timeout=60,
                      json={"experiment_ids": [job["mlflow_experiment_id"]]}).json()["runs"]
    assert len(runs) == 4  # the job's run and its 3 fold runs


def test_a_port_in_use_is_reported_and_nothing_starts(tmp_path):
    api_port, ui_port = free_port(), free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ui_port))
        squatter.listen()
        process = start_serve(tmp_path / "data", api_port, ui_port, ray_address="127.0.0.1:1")
        assert process.wait(timeout=60) == 2
    out = process.stdout.read()
    assert f"the MLflow UI: port {ui_port} on 127.0.0.1 is already in use" in out
    assert "CROSSFOLD_MLFLOW_UI_URL" in out
    assert not answers(f"http://127.0.0.1:{api_port}/healthz")  # nothing was started
