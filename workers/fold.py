"""One cross-validation fold, start to finish: prepare its data, train, test, checkpoint.

The caller (a Ray task in production, a plain call in tests and benchmarks) passes
the whole dataset, what it is (`DataInfo`), this fold's row indices and the job's
settings as plain values; the fold reports each epoch through `report` and returns a
`FoldOutcome`.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from workers.checkpointing import snapshot
from workers.early_stopping import EarlyStopping
from workers.models import build_model
from workers.optimizers import build_optimizer
from workers.plans import DataInfo, FoldPlan  # noqa: F401  (part of this module's interface)
from workers.tasks import Classification, Regression
from workers.packed_checkpointing import snapshot_pack
from workers.packed_model import PackedMLP
from workers.packed_optimizer import PackedOptimizer
from workers.packed_training import PackedFold, Stack, fit_packed
from workers.training import EpochReport, LossAverage, Split, Task, fit


FEATURE_DTYPE = np.float32  # what models train in; tests switch to float64 for exact comparisons


@dataclass
class FoldOutcome:
    index: int
    best_epoch: int
    epochs_run: int
    test_metrics: dict[str, float]
    checkpoint: bytes  # torch.save of the best epoch's state_dict


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


def serialize(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def fold_seed(job: dict, index: int) -> int:
    return job["cv"]["seed"] * 1000 + index


def make_stopper(job: dict) -> EarlyStopping:
    stopping = job["early_stopping"]
    return EarlyStopping(monitor=stopping["monitor"], patience=stopping["patience"],
                         min_delta=stopping["min_delta"])


def batch_size_of(job: dict) -> int | None:
    return None if job["batch_size"] == "full" else job["batch_size"]


class Checkpointer:
    """Calls `save(take(progress))` after an epoch when `every_s` seconds have passed since
    the last one (0: every epoch): checkpoints cost a copy of the model and optimizer."""

    def __init__(self, save: Callable[[bytes], None] | None, every_s: float, take=snapshot):
        self.save, self.every_s, self.take, self.last = save, every_s, take, time.monotonic()

    def __call__(self, progress) -> None:
        if self.save is not None and time.monotonic() - self.last >= self.every_s:
            self.save(self.take(progress))
            self.last = time.monotonic()


def run_fold(x: np.ndarray, y: np.ndarray, info: DataInfo, plan: FoldPlan, job: dict, *,
             device: torch.device, report: Callable[[EpochReport], None],
             checkpoint: Callable[[bytes], None] | None = None,
             resume_from: bytes | None = None) -> FoldOutcome:
    """Train fold `plan.index` of a job whose spec (as a dict) is `job`.

    `checkpoint` receives epoch checkpoints (see Checkpointer); `resume_from`, the last
    of them, makes a retried fold continue after that epoch instead of starting over.
    """
    seed = fold_seed(job, plan.index)
    torch.manual_seed(seed)  # same initial weights every time this fold runs
    x, y, task = prepare(x, y, info, plan.train)
    model = build_model(job["model"], info.input_shape, task.n_outputs).to(device)
    optimizer = build_optimizer(model.parameters(), job["optimizer"])
    save = Checkpointer(checkpoint, job.get("checkpoint_interval_s", 10.0))
    result = fit(model, optimizer, task, train=to_split(x, y, plan.train, device),
                 val=to_split(x, y, plan.val, device), test=to_split(x, y, plan.test, device),
                 batch_size=batch_size_of(job), max_epochs=job["max_epochs"],
                 stopper=make_stopper(job), seed=seed, ewma_beta=job.get("loss_ewma_beta", 0.9),
                 on_epoch_end=lambda epoch, progress: (report(epoch), save(progress)),
                 resume_from=resume_from)
    return FoldOutcome(plan.index, result.best_epoch, result.epochs_run, result.test_metrics,
                       serialize(result.best_state))


def run_packed_folds(x: np.ndarray, y: np.ndarray, info: DataInfo, plans: list[FoldPlan], job: dict, *,
                     device: torch.device, report: Callable[[int, EpochReport], None],
                     checkpoint: Callable[[bytes], None] | None = None,
                     resume_from: bytes | None = None) -> list[FoldOutcome | str]:
    """Train all of a job's folds in one stacked model (pack_folds); per fold, its outcome
    or the reason it failed. Each fold starts from the weights its unpacked run would;
    `checkpoint` and `resume_from` work as in run_fold, for the whole pack."""
    if job["model"]["type"] != "mlp":
        raise ValueError("pack_folds supports mlp models only")
    models, folds, splits = [], [], {"train": [], "val": [], "test": []}
    for plan in plans:
        seed = fold_seed(job, plan.index)
        torch.manual_seed(seed)
        fx, fy, task = prepare(x, y, info, plan.train)
        models.append(build_model(job["model"], info.input_shape, task.n_outputs))
        folds.append(PackedFold(plan.index, seed, task, make_stopper(job),
                                LossAverage(job.get("loss_ewma_beta", 0.9))))
        for name in splits:
            splits[name].append(to_split(fx, fy, getattr(plan, name), device))
    model = PackedMLP(models).to(device)
    optimizer = PackedOptimizer(model.parameters(), job["optimizer"], len(plans))
    results = fit_packed(model, optimizer, folds, train=Stack.of(splits["train"]),
                         val=Stack.of(splits["val"]), test=Stack.of(splits["test"]),
                         batch_size=batch_size_of(job), max_epochs=job["max_epochs"],
                         batch_norm=job["model"].get("batch_norm", False), on_epoch_end=report,
                         after_epoch=Checkpointer(checkpoint, job.get("checkpoint_interval_s", 10.0),
                                                  take=snapshot_pack),
                         resume_from=resume_from)
    return [result if isinstance(result, str) else
            FoldOutcome(plan.index, result.best_epoch, result.epochs_run, result.test_metrics,
                        serialize(result.best_state))
            for plan, result in zip(plans, results)]
