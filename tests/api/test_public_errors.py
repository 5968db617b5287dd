"""What errors show owners: the job JSON says what went wrong without internal addresses,
while the database keeps the error whole (services.public_errors)."""
import socket

import pytest

from services.jobs import get_job
from services.lifecycle import move_fold, move_job
from services.models import Job
from services.public_errors import public_message
from services.states import FoldStatus, JobStatus
from tests.helpers import small_job, store_job


@pytest.mark.parametrize("internal, public", [
    ("RayTaskError(OSError): ray::run_task() (pid=4021, ip=10.0.3.7, actor_id=ab12)",
     "RayTaskError(OSError): ray::run_task() (pid=4021, ip=<address>, actor_id=ab12)"),
    ("WorkerCrashedError: The worker died. Worker IP address: 172.18.0.4, Worker port: 10012",
     "WorkerCrashedError: The worker died. Worker IP address: <address>, Worker port: 10012"),
    ("ConnectionError: ray://ray-head:10001 unreachable (GCS at 10.0.0.2:6379)",
     "ConnectionError: <url> unreachable (GCS at <address>)"),
    ("could not start: GET http://mlflow:5000/api/2.0/runs/get?run_id=1 failed",
     "could not start: GET <url> failed"),
    ("ObjectLostError: owned by gpu-node-3.internal:48213 (worker-7:812)",
     "ObjectLostError: owned by <address> (<address>)"),
    ("retrying on [2001:db8::7]:8265, fe80::1 and ::ffff:10.0.0.5.",
     "retrying on <address>, <address> and <address>."),
])
def test_internal_addresses_are_replaced(internal, public):
    assert public_message(internal) == public


@pytest.mark.parametrize("message", [
    "loss became nan at epoch 3 (train_loss)",
    "fold 1 failed: loss became inf at epoch 12 (val_loss); fold 2 failed: cancelled",
    "RuntimeError: found two devices, cuda:0 and cpu! size mismatch torch.Size([32, 4])",
    'File "/app/workers/training.py", line 123, at 12:30:45 in std::vector',
])
def test_a_message_without_addresses_passes_unchanged(message):
    assert public_message(message) == message


def test_the_machines_own_host_name_is_hidden(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "ray-node")
    assert public_message("lost node ray-node (ray-node.internal), not ray-nodes or my-ray-node") == \
        "lost node <address> (<address>), not ray-nodes or my-ray-node"


@pytest.mark.parametrize("internal, public", [
    ("HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded",
     "HTTPConnectionPool(host='<address>', port=5000): Max retries exceeded"),
    ('connection to server at "postgres" (<address>), port 5432 failed',
     'connection to server at "<address>" (<address>), port 5432 failed'),
    ("node name: gpu-node-3 is dead", "node name: <address> is dead"),
    ("could not reach mlflow.internal port 5000", "could not reach <address> port 5000"),
])
def test_hosts_named_as_such_are_hidden_without_a_port_too(internal, public):
    assert public_message(internal) == public


def test_the_job_json_hides_internal_addresses_and_the_database_keeps_them(client, sessions):
    internal = "WorkerCrashedError: worker at 10.0.3.7:40123 died (ray://ray-head:10001)"
    with sessions() as session:
        job = get_job(session=session, job_id=store_job(session, small_job()).id)
        move_job(job, JobStatus.RUNNING)
        for fold in job.folds:
            move_fold(fold, FoldStatus.RUNNING)
            fold.worker = "gpu-node-3:4021"
        move_fold(job.folds[0], FoldStatus.FAILED)
        job.folds[0].error = internal
        move_job(job, JobStatus.FAILED)
        job.error = f"fold 0 failed: {internal}"
        session.commit()
        job_id = job.id
    shown = client.get(f"/jobs/{job_id}").json()
    public = "WorkerCrashedError: worker at <address> died (<url>)"
    assert shown["error"] == f"fold 0 failed: {public}"
    assert shown["folds"][0]["error"] == public
    assert {f["worker"] for f in shown["folds"]} == {None}
    listed = client.get("/jobs").json()["items"][0]
    assert listed["error"] == shown["error"] and listed["folds"][0]["error"] == public
    assert "10.0.3.7" not in str(listed) and "gpu-node-3" not in str(listed)
    with sessions() as session:  # kept whole, where the service's operators look
        stored = session.get(Job, job_id)
        assert stored.error == f"fold 0 failed: {internal}" and stored.folds[0].error == internal
        assert all(f.worker == "gpu-node-3:4021" for f in stored.folds)
