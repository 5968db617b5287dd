"""One cross-validation fold, start to finish: prepare its data, train, test, checkpoint.

The caller (workers.task inside a Ray worker, a plain call in tests and benchmarks)
passes the whole dataset, what it is (DataInfo), this fold's rows (FoldPlan) and the
job's TrainingConfig; the fold reports each epoch through its callbacks and returns a
FoldResult. workers.packed.fold trains all of a job's folds at once, the same way.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from workers.callbacks import Callbacks
from workers.config import TrainingConfig
from workers.early_stopping import EarlyStopping
from workers.models import build_model
from workers.optimizers import build_optimizer
from workers.plans import DataInfo, FoldPlan
from workers.results import FoldResult
from workers.tasks import Classification, Regression
from workers.training import Split, Task, fit

FEATURE_DTYPE = np.float32  # what models train in; tests switch to float64 for exact comparisons


def standardize(x: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """Scale with the training rows' statistics only, so that nothing about the
    validation or test rows leaks into training."""
    mean = x[train_rows].mean(axis=0)
    std = x[train_rows].std(axis=0)
    std = np.where(std == 0, 1.0, std)  # constant features (digits' blank pixels) stay at zero
    return ((x - mean) / std).astype(FEATURE_DTYPE)


def prepare(x: np.ndarray, y: np.ndarray, info: DataInfo, train_rows: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, Task]:
    """Standardized features and targets as the task wants them, and the task."""
    x = standardize(x, train_rows)
    if info.task == "classification":
        return x, y.astype(np.int64), Classification(info.n_classes)
    scale = float(y[train_rows].std()) or 1.0
    return x, standardize(y, train_rows), Regression(target_scale=scale)


def to_split(x: np.ndarray, y: np.ndarray, rows: np.ndarray, device: torch.device) -> Split:
    return Split(torch.from_numpy(x[rows]).to(device), torch.from_numpy(y[rows]).to(device))


def make_stopper(config: TrainingConfig) -> EarlyStopping:
    return EarlyStopping(**asdict(config.early_stopping))


def run_fold(x: np.ndarray, y: np.ndarray, info: DataInfo, plan: FoldPlan, config: TrainingConfig, *,
             device: torch.device, callbacks: Callbacks | None = None,
             resume_from: bytes | None = None) -> FoldResult:
    """Train fold `plan.index`. `resume_from`, the last epoch checkpoint the callbacks
    saved, makes a retried fold continue after that epoch instead of starting over."""
    seed = config.fold_seed(plan.index)
    torch.manual_seed(seed)  # same initial weights every time this fold runs
    x, y, task = prepare(x, y, info, plan.train)
    model = build_model(config.model, info.input_shape, task.n_outputs).to(device)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    return fit(model, optimizer, task, index=plan.index, train=to_split(x, y, plan.train, device),
               val=to_split(x, y, plan.val, device), test=to_split(x, y, plan.test, device),
               batch_size=config.batch_size, max_epochs=config.max_epochs, stopper=make_stopper(config),
               seed=seed, ewma_beta=config.loss_ewma_beta, callbacks=callbacks, resume_from=resume_from)
