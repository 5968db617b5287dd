"""Admission by what the cluster can run (services.capacity): a job no node can run is
refused at submission with the field, what is missing and what the nodes have; where
the cluster can grow it waits, queued, with its reason, and holds no capacity: a normal
job behind it runs. Real jobs, through the whole service on the test session's Ray
(2 CPUs, no GPU)."""
from __future__ import annotations

import time

import pytest

from services.capacity import EMPTY_RETRY_S, Need, NodeShape, refusal
from tests.helpers import fresh_database, running_service, small_job, wait_for, wait_until_finished

GPU_JOB = small_job(name="wants-a-gpu", resources={"gpus_per_fold": 1})
BIG_CPU_JOB = small_job(name="wants-many-cpus", resources={"cpus_per_fold": 16})


def test_a_refusal_names_the_field_what_is_missing_and_the_nodes():
    nodes = [NodeShape("a", 0, 0), NodeShape("b", 4, 0), NodeShape("c", 4, 0)]
    assert refusal(Need(1, 0), nodes) is None
    field, why = refusal(Need(1, 1), nodes)
    assert field == "resources.gpus_per_fold"
    assert why == "no node of the cluster has 1 GPU for a fold; its nodes have: 0 CPU, 0 GPU; 4 CPU, 0 GPU"
    assert refusal(Need(8, 0), nodes)[0] == "resources.cpus_per_fold"
    both = [NodeShape("cpu", 8, 0), NodeShape("gpu", 1, 1)]
    assert refusal(Need(4, 1), both)[0] == "resources"  # each exists, never on one node
    assert refusal(Need(4, 1), []) is None  # no node known yet: nothing to judge by


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    with fresh_database(request.param, tmp_path) as url:
        yield url


def test_a_job_no_node_can_run_is_refused_at_submission(ray_session, database, tmp_path):
    with running_service(database, tmp_path) as (http, _, dispatcher):
        wait_for(lambda: dispatcher.nodes, 30)  # published: before, the API has nothing to judge by
        time.sleep(EMPTY_RETRY_S + 0.2)  # and the API has looked again since
        for spec, field, missing in [(GPU_JOB, "resources.gpus_per_fold", "1 GPU"),
                                     (BIG_CPU_JOB, "resources.cpus_per_fold", "16 CPU")]:
            answer = http.post("/jobs", json=spec)
            assert answer.status_code == 422
            [detail] = answer.json()["detail"]
            assert detail["loc"][-2:] == field.split(".") or detail["loc"][-1] == field, detail
            assert f"no node of the cluster has {missing} for a fold" in detail["msg"]
            assert "2 CPU, 0 GPU" in detail["msg"]  # what the nodes have
        assert http.get("/jobs").json()["total"] == 0  # nothing stored


def test_where_the_cluster_can_grow_such_a_job_waits_and_blocks_no_one(ray_session, database, tmp_path):
    with running_service(database, tmp_path, cluster_can_grow=True) as (http, _, _):
        waiting = http.post("/jobs", json=GPU_JOB).json()
        normal = http.post("/jobs", json=small_job(name="normal", max_epochs=2)).json()
        assert wait_until_finished(http, normal["id"])["status"] == "succeeded"
        shown = wait_for(lambda: (job := http.get(f"/jobs/{waiting['id']}").json())["waiting_reason"] and job, 30)
        assert shown["status"] == "queued"
        assert shown["waiting_reason"].startswith("waiting for the cluster to grow: no node of the cluster has 1 GPU")
        assert http.post(f"/jobs/{waiting['id']}/cancel").status_code in (200, 202)
        assert wait_for(lambda: http.get(f"/jobs/{waiting['id']}").json()["status"] == "cancelled", 30)
