"""One cross-validation fold, start to finish: prepare its data, train, test, checkpoint.

The caller (workers.task inside a Ray worker, a plain call in tests and benchmarks)
passes the job's table (workers.table), what it is (DataInfo), this fold's rows
(FoldPlan) and the job's TrainingConfig; the fold reports each epoch through its
callbacks and returns a FoldResult. workers.packed.fold trains all of a job's folds at
once, the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from workers.callbacks import Callbacks
from workers.config import TrainingConfig
from workers.early_stopping import make_stopper
from workers.encoding import fit_and_encode, standardize
from workers.models import build_model
from workers.optimizers import build_optimizer
from workers.plans import DataInfo, FoldPlan
from workers.results import FoldResult
from workers.table import Table
from workers.tasks import Classification, Regression
from workers.training import Split, Task, fit


@dataclass(frozen=True)
class Prepared:
    """A fold's inputs and targets for every row, its task, and how they were made."""
    x: np.ndarray
    y: np.ndarray
    task: Task
    preprocessing: dict  # the encoding's state and the target's: what an exported model needs


def prepare(table: Table, info: DataInfo, train_rows: np.ndarray) -> Prepared:
    """Features encoded and standardized with the training rows' statistics only, targets
    as the task wants them (class indices, or standardized values), and the task."""
    x, encoded = fit_and_encode(table.features, train_rows)
    if x.shape[1] != int(np.prod(info.input_shape)):
        raise ValueError(f"the data encode to {x.shape[1]} inputs; the job expected {info.input_shape}")
    preprocessing = {**encoded.state(), "imputed": encoded.imputed}
    if info.task == "classification":
        y = np.searchsorted(np.asarray(info.classes), table.label) if info.classes else table.label
        return Prepared(x, y.astype(np.int64), Classification(info.n_classes),
                        {**preprocessing, "classes": list(info.classes)})
    target = table.label.astype(np.float64)  # statistics in float64, as the features'
    scale = float(target[train_rows].std()) or 1.0
    preprocessing["target"] = {"mean": float(target[train_rows].mean()), "std": scale}
    return Prepared(x, standardize(target, train_rows), Regression(target_scale=scale), preprocessing)


def to_split(x: np.ndarray, y: np.ndarray, rows: np.ndarray, device: torch.device) -> Split:
    return Split(torch.from_numpy(x[rows]).to(device), torch.from_numpy(y[rows]).to(device))


def run_fold(table: Table, info: DataInfo, plan: FoldPlan, config: TrainingConfig, *,
             device: torch.device, callbacks: Callbacks | None = None,
             resume_from: bytes | None = None) -> FoldResult:
    """Train fold `plan.index`. `resume_from`, the last epoch checkpoint the callbacks
    saved, makes a retried fold continue after that epoch instead of starting over."""
    seed = config.fold_seed(plan.index)
    torch.manual_seed(seed)  # same initial weights every time this fold runs
    data = prepare(table, info, plan.train)
    model = build_model(config.model, info.input_shape, data.task.n_outputs).to(device)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    x, y = data.x, data.y
    result = fit(model, optimizer, data.task, index=plan.index, train=to_split(x, y, plan.train, device),
                 val=to_split(x, y, plan.val, device), test=to_split(x, y, plan.test, device),
                 batch_size=config.batch_size, max_epochs=config.max_epochs, stopper=make_stopper(config),
                 seed=seed, ewma_beta=config.loss_ewma_beta, callbacks=callbacks, resume_from=resume_from)
    return replace(result, preprocessing=data.preprocessing)
