"""Accepted means runnable: every rule the runtime enforces has its 422 at submission.

Each row is a spec the runtime would refuse, the field the 422 must name, and a check
that the runtime really refuses it (the spec built without validation and handed to the
piece of code that would run it): a rule here that the runtime does not enforce, or a
runtime rule that lost its 422, fails this test."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from services.data_spec import DatasetSpec
from services.datasets import load_dataset
from services.memory import cnn_sizes, estimate, mlp_sizes
from services.job_data import resolve
from services.spec import JobSpec
from tests.helpers import small_job
from workers.config import CNNConfig, MLPConfig
from workers.models import build_model


def generate(**sizes):
    load_dataset(DatasetSpec.model_construct(**{"name": "synthetic", "rows": 100, "features": 4,
                                                "classes": 2, "seed": 0, **sizes}))


def remote_with_gpus(gpus):
    remote_with(num_gpus=gpus)


def remote_with(**resources):
    import ray
    ray.remote(**resources)(lambda: None).remote()


def train_one_batch_norm_step(rows):
    model = build_model(MLPConfig(hidden=(4,), batch_norm=True, dropout=0.0), (4,), 2)
    model.train()
    model(torch.zeros(rows, 4))


def stratified_split(folds, per_class):
    from sklearn.model_selection import StratifiedKFold
    labels = np.repeat([0, 1], per_class)
    list(StratifiedKFold(folds).split(labels, labels))


def cnn_on_rows():
    build_model(CNNConfig(channels=(4,), hidden=(8,), batch_norm=False, dropout=0.0), (4,), 2)


RULES = {
    "dataset seed above 2³²−1": (dict(dataset={"name": "synthetic", "seed": 2**32}), "dataset.seed",
                                lambda: generate(seed=2**32)),
    "too few features for the classes": (dict(dataset={"name": "synthetic", "features": 2, "classes": 100,
                                                       "rows": 2000}), "dataset",
                                         lambda: generate(features=2, classes=100, rows=2000)),
    "fractional GPUs above 1": (dict(resources={"gpus_per_fold": 1.5}), "resources.gpus_per_fold",
                                lambda: remote_with_gpus(1.5)),
    "a CPU share finer than Ray counts": (dict(resources={"cpus_per_fold": 0.00005}), "resources.cpus_per_fold",
                                          lambda: remote_with(num_cpus=0.00005)),
    "a GPU share finer than Ray counts": (dict(resources={"gpus_per_fold": 0.00005}), "resources.gpus_per_fold",
                                          lambda: remote_with(num_gpus=0.00005)),
    "cv seed above 2³²−1": (dict(cv={"folds": 3, "seed": 2**32}), "cv.seed",
                           lambda: np.random.RandomState(2**32)),
    "batch norm on one-row batches": (dict(batch_size=1), "body", lambda: train_one_batch_norm_step(1)),
    "more stratified folds than a class has rows": (
        dict(dataset={"name": "synthetic", "rows": 40, "classes": 10}, cv={"folds": 5}), "cv.folds",
        lambda: stratified_split(5, 4)),
    "a cnn on tabular data": (dict(model={"type": "cnn"}), "model.type", cnn_on_rows),
}


@pytest.mark.parametrize("name", list(RULES))
def test_the_runtime_refuses_it(name, ray_session):
    _, _, run = RULES[name]
    with pytest.raises(ValueError):
        run()


@pytest.mark.parametrize("name", list(RULES))
def test_submission_refuses_it_with_a_422_naming_the_field(client, name):
    overrides, field, _ = RULES[name]
    answer = client.post("/jobs", json=small_job(**overrides))
    assert answer.status_code == 422, answer.text
    locations = [".".join(map(str, e["loc"][1:])) or "body" for e in answer.json()["detail"]]
    assert any(location.startswith(field) for location in locations), (field, locations)
    assert client.get("/jobs").json()["total"] == 0


def test_a_fold_that_would_not_fit_in_memory_is_refused_naming_the_estimate(client):
    """The review's job: 8 layers of 4,096 units, full batch, 2 M generated rows."""
    huge = small_job(dataset={"name": "synthetic", "rows": 2_000_000, "features": 25},
                     model={"hidden": [4096] * 8}, batch_size="full")
    answer = client.post("/jobs", json=huge)
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "batch_size"]
    assert "GiB" in error["msg"] and "CROSSFOLD_MAX_FOLD_MEMORY_BYTES" in error["msg"]
    assert client.post("/jobs", json={**huge, "batch_size": 256, "dataset": "iris"}).status_code == 201


def test_the_estimate_counts_the_parameters_the_models_really_have():
    mlp = MLPConfig(hidden=(300, 100), batch_norm=True, dropout=0.2)
    cnn = CNNConfig(channels=(16, 32), hidden=(64,), batch_norm=True, dropout=0.0)
    for config, shape, sizes in [(mlp, (64,), mlp_sizes(mlp, 64, 10)), (cnn, (1, 8, 8), cnn_sizes(cnn, (1, 8, 8), 10))]:
        real = sum(p.numel() for p in build_model(config, shape, 10).parameters())
        assert sizes[0] == real, (config, sizes[0], real)


def test_the_estimate_grows_with_the_batch_and_the_optimizers_state():
    def total(**overrides):
        spec = JobSpec.model_validate(small_job(dataset={"name": "synthetic"}, **overrides))
        return estimate(spec, resolve(spec, session=None, owner=None))
    assert total(batch_size=256).activations == 16 * total(batch_size=16).activations
    sgd, adam = total(optimizer={"name": "sgd", "lr": 0.1}), total()
    assert sgd.optimizer == 0 and adam.optimizer == adam.parameters  # two values a parameter, as weights + grads
