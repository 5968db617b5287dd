"""`crossfold serve`, as a person starts it: a real process with the API, the
dispatcher and the MLflow UI, joined to the test session's Ray."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers import free_port, needs_chromium, render, small_job, wait_for


@pytest.fixture
def served(ray_session, tmp_path):
    api_port, ui_port = free_port(), free_port()
    env = {**os.environ, "CROSSFOLD_DATA_DIR": str(tmp_path / "data"),
           "CROSSFOLD_API_PORT": str(api_port),
           "CROSSFOLD_MLFLOW_UI_URL": f"http://127.0.0.1:{ui_port}",
           "CROSSFOLD_RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield process, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}"
    if process.poll() is None:
        process.kill()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_runs_a_job_shows_it_in_the_mlflow_ui_and_stops_cleanly(served):
    process, api, ui = served
    wait_for(lambda: answers(f"{api}/healthz") or process.poll() is not None, 120, 0.5)
    assert process.poll() is None, process.stdout.read()
    job = httpx.post(f"{api}/jobs", json=small_job(max_epochs=3)).json()
    done = wait_for(lambda: (j := httpx.get(f"{api}/jobs/{job['id']}").json())["status"]
                    in ("succeeded", "failed") and j, 120)
    assert done["status"] == "succeeded", done["error"]
    wait_for(lambda: answers(ui), 60, 0.5)
    runs = httpx.post(f"{ui}/api/2.0/mlflow/runs/search",
                      json={"experiment_ids": [done["mlflow_experiment_id"]]}).json()["runs"]
    assert len(runs) == 4  # the job's run and its 3 fold runs
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    time.sleep(1)
    assert not answers(ui), "the MLflow UI outlived the service"


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