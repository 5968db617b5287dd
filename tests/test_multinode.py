"""A real multi-node Ray cluster on this machine: a head and worker nodes, each a
`ray start` process of its own (token authentication on, as Ray 2.60 starts clusters),
and `crossfold serve` joined to it, on PostgreSQL. In order, on one cluster:

1. With one worker node (1 CPU), queued jobs run one fold at a time; a second node
   added mid-queue is used at once, with no restart: two folds run together.
2. A 5-fold job over HTTP spreads its folds over both worker nodes; one node is then
   killed (kill -9: its raylet, its workers, all of it) while a fold runs there. The
   fold resumes on the surviving node from its last epoch checkpoint (the checkpoint
   store, not the lost node's memory), the job succeeds, every fold's MLflow epochs are
   continuous with no step logged twice, and no fold that had finished is run again.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from api.watchdog import descendants, end_all
from tests.helpers import fresh_database, free_port, wait_for

RAY = str(Path(sys.executable).with_name("ray"))
NODE_OBJECT_STORE = str(80 * 2**20)  # small: the nodes share one machine's memory
# Found out sooner that a node is gone than Ray's defaults (3 s × 5 after 5 s) would.
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
                      "RAY_health_check_initial_delay_ms": "1000"}


class RayNodes:
    """`ray start --block` processes: the head, then worker nodes, each with one CPU and a
    resource of its own (crossfold_node_<n>) naming it."""

    def __init__(self, folder: Path):
        token = secrets.token_hex(16)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **FAST_HEALTH_CHECKS}
        self.port, self.temp_dir = free_port(), folder
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_head(self) -> None:
        # No CPUs: the head schedules and holds the progress board; folds run on workers.
        self.start("head", ["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                            f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp_dir}"])

    def add_worker(self, number: int) -> None:
        self.start(f"node_{number}", [f"--address={self.address}", "--num-cpus=1",
                                      f"--resources={json.dumps({f'crossfold_node_{number}': 1})}"])

    def start(self, name: str, arguments: list[str]) -> None:
        self.processes[name] = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
             f"--object-store-memory={NODE_OBJECT_STORE}", *arguments],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def node_id_of(self, name: str) -> str | None:
        """The Ray node id of a started node: its raylet's --node_id."""
        for pid, _ in descendants(self.processes[name].pid):
            try:
                arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if arguments and arguments[0].endswith(b"raylet"):
                return next((a.split(b"=", 1)[1].decode() for a in arguments if a.startswith(b"--node_id=")), None)
        return None

    def kill(self, name: str) -> None:
        """kill -9 the node: `ray start` and everything under it, raylet and workers."""
        process = self.processes.pop(name)
        victims = descendants(process.pid)
        for pid, _ in [(process.pid, 0), *victims]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=30)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):  # workers first, then the head
            process = self.processes.pop(name)
            end_all({(process.pid, 0), *descendants(process.pid)} - {(process.pid, 0)}, grace_s=10)
            process.kill()
            process.wait(timeout=30)


@contextmanager
def ray_cluster(folder: Path, workers: int) -> Iterator[RayNodes]:
    nodes = RayNodes(folder)
    try:
        nodes.start_head()
        wait_for(lambda: nodes.node_id_of("head"), 60)
        for number in range(1, workers + 1):
            nodes.add_worker(number)
        wait_for(lambda: all(nodes.node_id_of(f"node_{n}") for n in range(1, workers + 1)), 120)
        yield nodes
    finally:
        nodes.stop()


@contextmanager
def serving(nodes: RayNodes, data_dir: Path, database_url: str) -> Iterator[httpx.Client]:
    port = free_port()
    env = {**nodes.env, "CROSSFOLD_DATA_DIR": str(data_dir), "CROSSFOLD_API_PORT": str(port),
           "CROSSFOLD_DATABASE_URL": database_url, "CROSSFOLD_RAY_ADDRESS": nodes.address,
           "CROSSFOLD_POLL_INTERVAL_S": "0.2"}
    service = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--no-ui"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            wait_for(lambda: answers(http, "/healthz"), 120, interval=0.5)
            wait_for(lambda: answers(http, "/readyz"), 120, interval=0.5)  # its nodes published
            yield http
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)


def submit(http: httpx.Client, spec: dict) -> str:
    """The job's id. On a loaded machine the dispatcher may first publish the cluster
    before its worker node registered (the head alone has no CPU): the API then refuses
    a job no node can run, until it reads the nodes again. Only that refusal is retried."""
    def accepted():
        answer = http.post("/jobs", json=spec)
        if answer.status_code == 422 and "no node of the cluster" in answer.text:
            return None
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]
    return wait_for(accepted, 60, interval=1.0)


def answers(http: httpx.Client, path: str) -> bool:
    try:
        return http.get(path).status_code == 200
    except httpx.TransportError:
        return False


def job() -> dict:
    # Epochs of about 0.4 s (at 6000 rows they took 55 ms, and a whole fold could end
    # between what the API showed and the kill), a checkpoint after each: a node killed
    # mid-fold leaves a checkpoint some epochs in.
    return {"name": "multinode", "dataset": {"name": "synthetic", "rows": 30000, "features": 16,
                                             "classes": 3, "seed": 0},
            "model": {"type": "mlp", "hidden": [64]}, "optimizer": {"name": "adam", "lr": 0.001},
            "batch_size": 16, "max_epochs": 12, "early_stopping": {"patience": 100},
            "cv": {"folds": 5, "seed": 0}, "checkpoint_interval_s": 0,
            "resources": {"cpus_per_fold": 1, "gpus_per_fold": 0}}


def on_node(job_status: dict, node: str) -> list[dict]:
    return [f for f in job_status["folds"] if f["nodes"] and f["nodes"][-1]["node"] == node]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One worker node to begin with; the tests add and kill nodes."""
    folder = tmp_path_factory.mktemp("multinode")
    ray_folder = Path(f"/tmp/cf-mn-{secrets.token_hex(3)}")  # short: Ray's socket paths have a length limit
    with fresh_database("postgresql", folder) as url, ray_cluster(ray_folder, workers=1) as nodes, \
            serving(nodes, folder / "data", url) as http:
        yield nodes, http, folder / "data"


def running_folds(http, job_ids: list[str]) -> int:
    return sum(f["status"] == "running" for j in job_ids for f in http.get(f"/jobs/{j}").json()["folds"])


def test_a_node_added_mid_queue_runs_more_folds_at_once(service):
    nodes, http, _ = service
    slow = {**job(), "max_epochs": 60, "cv": {"folds": 3, "seed": 0}}
    job_ids = [submit(http, {**slow, "name": f"queued-{n}"}) for n in range(2)]
    wait_for(lambda: running_folds(http, job_ids) == 1, 60, interval=0.2)
    for _ in range(10):  # one CPU: one fold at a time, the second job waiting in the queue
        assert running_folds(http, job_ids) <= 1
        assert http.get(f"/jobs/{job_ids[1]}").json()["status"] == "queued"
    nodes.add_worker(2)
    wait_for(lambda: running_folds(http, job_ids) == 2, 60, interval=0.2)
    for job_id in job_ids:
        http.post(f"/jobs/{job_id}/cancel")
    for job_id in job_ids:
        wait_for(lambda: http.get(f"/jobs/{job_id}").json()["status"] == "cancelled", 60)


def test_folds_spread_over_nodes_and_a_lost_node_s_fold_resumes_elsewhere(service):
    nodes, http, data_dir = service
    if "node_2" not in nodes.processes:
        nodes.add_worker(2)
        wait_for(lambda: nodes.node_id_of("node_2"), 60)
    victim, survivor = nodes.node_id_of("node_1"), nodes.node_id_of("node_2")
    job_id = submit(http, job())

    def victim_busy():
        status = http.get(f"/jobs/{job_id}").json()
        done = [f for f in on_node(status, victim) if f["status"] == "succeeded"]
        # Early in its epochs: the API shows a fold's progress a tick (0.5 s) or more late,
        # and a fold that ends before the kill has nothing to resume.
        running = [f for f in on_node(status, victim) if f["status"] == "running" and 2 <= f["epoch"] <= 6]
        return done and running and (done, running[0])

    finished_there, interrupted = wait_for(victim_busy, 90, interval=0.1)
    nodes.kill("node_1")
    status = wait_for(lambda: (s := http.get(f"/jobs/{job_id}").json())["status"] in
                      ("succeeded", "failed", "cancelled") and s, 120, interval=0.5)

    assert status["status"] == "succeeded", status["error"]
    folds = {f["index"]: f for f in status["folds"]}
    assert {a["node"] for f in folds.values() for a in f["nodes"]} == {victim, survivor}
    resumed = folds[interrupted["index"]]
    assert [a["node"] for a in resumed["nodes"]][-2:] == [victim, survivor]
    assert resumed["nodes"][-1]["resumed_after_epoch"] >= interrupted["epoch"] - 1 >= 1
    for fold in finished_there:  # finished on the lost node: never run again
        assert folds[fold["index"]]["attempts"] == 1 and folds[fold["index"]]["nodes"] == fold["nodes"]
    check_mlflow(data_dir, status, victim)
    assert not (data_dir / "checkpoints" / job_id).exists()  # resume checkpoints go with the job


def check_mlflow(data_dir: Path, status: dict, victim: str) -> None:
    """Every fold's epochs 1..n logged once each; its node tags set."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}")
    for fold in status["folds"]:
        steps = [m.step for m in client.get_metric_history(fold["mlflow_run_id"], "val_loss")]
        assert sorted(steps) == list(range(1, fold["epoch"] + 1)), (fold["index"], steps)
        tags = client.get_run(fold["mlflow_run_id"]).data.tags
        assert tags["crossfold.node"] == fold["nodes"][-1]["node"]
        if fold["attempts"] > 1:
            assert tags["crossfold.attempt_1_node"] == victim
