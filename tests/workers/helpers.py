"""What the worker tests share. A module to import rather than a conftest.py: these tests
also run with --noconftest on a GPU machine that has torch, numpy, scikit-learn and
pytest but none of the service's packages (bench/device_check.sh)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from workers.callbacks import Callbacks, EpochReport
from workers.config import (AdamConfig, MLPConfig, MomentumConfig, OptimizerConfig, ResourcesConfig,
                            RMSpropConfig, SGDConfig, StoppingConfig, TrainingConfig)
from workers.fold import run_fold
from workers.packed.fold import run_packed_folds
from workers.table import Table
from workers.plans import DataInfo, plans_from_groups

CPU = torch.device("cpu")
OPTIMIZER_TYPES = {"sgd": SGDConfig, "momentum": MomentumConfig, "rmsprop": RMSpropConfig,
                   "adam": AdamConfig}
# The lecture's values, as the job spec's defaults have them (tests/services/test_spec.py checks).
LECTURE_VALUES = {"momentum": {"beta": 0.9}, "rmsprop": {"beta": 0.9, "eps": 1e-8},
                  "adam": {"beta1": 0.9, "beta2": 0.98, "eps": 1e-8, "bias_correction": True}}


def optimizer(name: str, **values) -> OptimizerConfig:
    """An optimizer's configuration: the lecture's values where the test gives none."""
    return OPTIMIZER_TYPES[name](**{**LECTURE_VALUES.get(name, {}), **values})


def as_config(values: dict) -> OptimizerConfig:
    """{"name": ..., ...}, the shape the NumPy reference reads, as a configuration."""
    return optimizer(**values)


# Every update rule, in the shape the NumPy reference (test_optimizers.py) reads.
OPTIMIZER_VALUES = [
    {"name": "sgd", "lr": 0.05},
    {"name": "momentum", "lr": 0.05, "beta": 0.9},
    {"name": "rmsprop", "lr": 0.01, "beta": 0.9, "eps": 1e-8},
    {"name": "adam", "lr": 0.01, "beta1": 0.9, "beta2": 0.98, "eps": 1e-8, "bias_correction": True},
    {"name": "adam", "lr": 0.01, "beta1": 0.9, "beta2": 0.98, "eps": 1e-8, "bias_correction": False},
]


def stopping(monitor: str = "val_loss", patience: int | None = 10, min_delta: float = 0.0,
             target_val_loss: float | None = None) -> StoppingConfig:
    return StoppingConfig(monitor, patience, min_delta, target_val_loss)


def training(**changes) -> TrainingConfig:
    """A small classification job's configuration, with `changes`."""
    base = TrainingConfig(model=MLPConfig((32,), batch_norm=True, dropout=0.1),
                          optimizer=optimizer("adam", lr=0.01), batch_size=16, max_epochs=20,
                          early_stopping=stopping(patience=5), seed=0, loss_ewma_beta=0.9,
                          checkpoint_interval_s=10.0, pack_folds=False,
                          resources=ResourcesConfig(cpus_per_fold=1, gpus_per_fold=0),
                          data_loading="memory", shuffle_buffer_rows=65_536)
    return replace(base, **changes)


def recording(reports: dict[int, list[EpochReport]] | list[EpochReport], snapshots: list | None = None
              ) -> Callbacks:
    """Callbacks that keep every epoch report (per fold, given a dict) and, with
    `snapshots`, a checkpoint after every epoch."""
    def report(fold: int, epoch: EpochReport) -> None:
        (reports.setdefault(fold, []) if isinstance(reports, dict) else reports).append(epoch)
    return Callbacks(report, snapshots.append if snapshots is not None else None, 0.0)


# -- Packed against unpacked training (test_packing.py, and on CUDA test_graphed.py) ----
INFO = DataInfo("classification", (5,), 3)


def blobs(n=103, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 5)) + 2 * np.eye(3, 5)[y]
    return x.astype(np.float32), y.astype(np.int64)


def plans(n, k=3):
    """Rotating folds of unequal sizes (103 rows in 3 groups: 35, 34, 34)."""
    groups = np.array_split(np.random.default_rng(1).permutation(n), k)
    return plans_from_groups(groups, range(k))


def split_plan(train, val, test):
    """Fold 0 of three groups: it tests on `test`, validates on `val`, trains on `train`."""
    return plans_from_groups([np.asarray(test), np.asarray(val), np.asarray(train)], [0])[0]


def job_for(optimizer_config, batch_size=8, batch_norm=True):
    return training(model=MLPConfig((16, 8), batch_norm=batch_norm, dropout=0.0),
                    optimizer=optimizer_config, batch_size=None if batch_size == "full" else batch_size,
                    max_epochs=12, early_stopping=stopping(patience=3))


OPTIMIZERS = [optimizer("sgd", lr=0.1), optimizer("momentum", lr=0.1, beta=0.9),
              optimizer("rmsprop", lr=0.01, beta=0.9, eps=1e-8),
              optimizer("adam", lr=0.01, beta1=0.9, beta2=0.98, eps=1e-8)]


def name_of(config) -> str:
    return type(config).__name__.removesuffix("Config").lower()


def run_both(job, x, y, fold_plans, info=INFO):
    """Both ways on the CPU: (unpacked results, their reports, packed results, theirs)."""
    unpacked_reports = {}
    unpacked = [run_fold(Table.of(x, y), info, p, job, device=CPU, callbacks=recording(unpacked_reports))
                for p in fold_plans]
    packed_reports = {}
    packed = run_packed_folds(Table.of(x, y), info, fold_plans, job, device=CPU, callbacks=recording(packed_reports))
    return unpacked, unpacked_reports, packed, packed_reports


@pytest.fixture
def float64(monkeypatch):
    """Exact comparisons: in float32, training amplifies rounding differences between
    the batched and the plain matrix products; in float64 they stay at ~1e-13."""
    import workers.encoding
    monkeypatch.setattr(workers.encoding, "FEATURE_DTYPE", np.float64)
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)
