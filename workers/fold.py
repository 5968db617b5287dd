"""One cross-validation fold, start to finish: prepare its data, train, test, checkpoint.

The caller (a Ray task in production, a plain call in tests and benchmarks) passes
the whole dataset, this fold's row indices and the job's settings as plain values;
the fold reports each epoch through `report` and returns a `FoldOutcome`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from workers.early_stopping import EarlyStopping
from workers.models import build_model
from workers.optimizers import build_optimizer
from workers.training import EpochReport, Split, fit


@dataclass(frozen=True)
class FoldPlan:
    """Which rows fold `index` trains, validates and tests on."""
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class FoldOutcome:
    index: int
    best_epoch: int
    epochs_run: int
    test_metrics: dict[str, float]
    checkpoint: bytes  # torch.save of the best epoch's state_dict


def standardize(x: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """Scale features with the training rows' statistics only, so that nothing about
    the validation or test rows leaks into training."""
    mean = x[train_rows].mean(axis=0)
    std = x[train_rows].std(axis=0)
    std[std == 0] = 1.0  # constant features (digits' blank pixels) stay at zero
    return ((x - mean) / std).astype(np.float32)


def to_split(x: np.ndarray, y: np.ndarray, rows: np.ndarray, device: torch.device) -> Split:
    return Split(torch.from_numpy(x[rows]).to(device), torch.from_numpy(y[rows]).to(device))


def serialize(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def run_fold(x: np.ndarray, y: np.ndarray, plan: FoldPlan, job: dict, *,
             device: torch.device, report: Callable[[EpochReport], None]) -> FoldOutcome:
    """Train fold `plan.index` of a job whose spec (as a dict) is `job`."""
    seed = job["cv"]["seed"] * 1000 + plan.index
    torch.manual_seed(seed)  # same initial weights every time this fold runs
    x = standardize(x, plan.train)
    y = y.astype(np.int64)
    n_classes = int(y.max()) + 1
    model = build_model(job["model"], x.shape[1], n_classes).to(device)
    optimizer = build_optimizer(model.parameters(), job["optimizer"])
    stopping = job["early_stopping"]
    stopper = EarlyStopping(monitor=stopping["monitor"], patience=stopping["patience"],
                            min_delta=stopping["min_delta"])
    batch_size = None if job["batch_size"] == "full" else job["batch_size"]
    result = fit(model, optimizer, train=to_split(x, y, plan.train, device),
                 val=to_split(x, y, plan.val, device), test=to_split(x, y, plan.test, device),
                 batch_size=batch_size, max_epochs=job["max_epochs"], stopper=stopper,
                 seed=seed, on_epoch_end=report)
    return FoldOutcome(plan.index, result.best_epoch, result.epochs_run,
                       {"loss": result.test_loss, "accuracy": result.test_accuracy},
                       serialize(result.best_state))
