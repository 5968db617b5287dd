"""The training loop of one fold: mini-batches of device tensors, early stopping, test.

Mini-batches are index slices of tensors that already sit on the device, not a
per-sample DataLoader. Losses and metric sums stay on the device and are read back
once per epoch (one host synchronisation), not once per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from workers.callbacks import Callbacks, EpochReport
from workers.checkpointing import Progress, weights_bytes
from workers.early_stopping import EarlyStopping
from workers.graphed import StepGraph, step_graph
from workers.results import Ending, FoldResult
from workers.tasks import Classification, Regression

EVAL_CHUNK = 8192  # rows per forward pass when evaluating; bounds the memory used
Task = Classification | Regression


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number; the fold cannot go on."""


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


class LossAverage:
    """Exponentially weighted average v_t = β v_{t-1} + (1-β) x_t with v_0 = 0; it
    averages about 1/(1-β) values. Early values are biased toward 0, hence also
    v_t / (1 - β^t)."""

    def __init__(self, beta: float):
        self.beta, self.value, self.count = beta, 0.0, 0

    def update(self, x: float) -> tuple[float, float]:
        self.count += 1
        self.value = self.beta * self.value + (1 - self.beta) * x
        return self.value, self.value / (1 - self.beta ** self.count)


def batch_starts(n_rows: int, batch_size: int | None) -> range:
    """Start offsets of an epoch's mini-batches; `None` means the full batch.

    The last batch keeps the remainder (n_rows % batch_size rows), so every sample
    is seen once per epoch; with batch norm a remainder of one sample is skipped.
    """
    return range(0, n_rows, n_rows if batch_size is None else batch_size)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, data: Split,
                    batch_size: int | None, generator: torch.Generator,
                    graph: StepGraph | None = None) -> torch.Tensor:
    """One pass in a fresh random order; the mean loss, still on the device. With a
    `graph` (workers.graphed), full-size batches replay its captured step."""
    model.train()
    n = len(data)
    size = n if batch_size is None else batch_size
    order = torch.randperm(n, generator=generator).to(data.x.device)
    skip_single = has_batch_norm(model)  # batch norm cannot estimate a variance from one row
    total = torch.zeros((), device=data.x.device)
    seen = 0
    for start in batch_starts(n, batch_size):
        idx = order[start:start + size]
        if len(idx) == 1 and skip_single:
            continue
        seen += len(idx)
        if graph is not None and len(idx) == graph.batch_size:
            graph.run(idx)
            continue
        loss = task.loss(model(data.x[idx]), data.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total.add_(loss.detach(), alpha=len(idx))
    if graph is not None:
        total += graph.take_total()
    return total / max(seen, 1)


@torch.no_grad()
def evaluation_sums(model: nn.Module, task: Task, data: Split) -> torch.Tensor | None:
    """The task's metric sums over a split, in evaluation mode (running batch-norm
    statistics, no dropout), on the device; None for an empty split (a refit's)."""
    model.eval()
    sums = None
    for start in range(0, len(data), EVAL_CHUNK):
        part = task.sums(model(data.x[start:start + EVAL_CHUNK]), data.y[start:start + EVAL_CHUNK])
        sums = part if sums is None else sums + part
    return sums


def evaluate(model: nn.Module, task: Task, data: Split) -> dict[str, float]:
    return task.metrics(evaluation_sums(model, task, data).tolist(), len(data))


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def epoch_metrics(task: Task, train_loss: float, val_sums: list[float] | None, n_val: int,
                  average: LossAverage) -> dict[str, float]:
    """The epoch's training loss and its averages, and the validation metrics when there
    is a validation split (a refit, trained on every row, has none)."""
    ewma, corrected = average.update(train_loss)
    val = task.metrics(val_sums, n_val) if val_sums is not None else {}
    return {"train_loss": train_loss, "train_loss_ewma": ewma, "train_loss_ewma_corrected": corrected,
            **{f"val_{name}": value for name, value in val.items()}}


def check_finite(metrics: dict[str, float], epoch: int) -> None:
    for name in ("train_loss", "val_loss"):
        if name in metrics and not math.isfinite(metrics[name]):
            raise TrainingDiverged(f"loss became {metrics[name]} at epoch {epoch} ({name})")


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, *, index: int, train: Split,
        val: Split, test: Split, batch_size: int | None, max_epochs: int, stopper: EarlyStopping,
        seed: int, ewma_beta: float, callbacks: Callbacks | None = None,
        resume_from: bytes | None = None) -> FoldResult:
    """Train fold `index` until early stopping, restore the best epoch's weights, then
    test them. A loss that stops being finite fails the fold, with the epoch.

    `callbacks` hears of every epoch and may checkpoint the training's Progress;
    `resume_from`, such a checkpoint, continues after its epoch.
    """
    callbacks = callbacks or Callbacks()
    progress = Progress(model, optimizer, stopper, LossAverage(ewma_beta),
                        torch.Generator().manual_seed(seed))
    if resume_from is not None:
        progress.restore(resume_from)
    stopped = progress.epoch > 0 and stopper.ran_out()
    # Captured after any restore: the graph holds the tensors it saw (a later
    # load_state_dict that replaced them would go unseen by its replays).
    graph = None if stopped else step_graph(model, optimizer, task.loss, train.x, train.y, batch_size)
    while not stopped and progress.epoch < max_epochs:
        progress.epoch += 1
        train_loss = train_one_epoch(model, optimizer, task, train, batch_size, progress.generator, graph)
        try:
            stopped = close_epoch(task, index, progress, callbacks, train_loss,
                                  evaluation_sums(model, task, val), len(val))
        except TrainingDiverged as error:
            return FoldResult.failed(index, str(error), progress.epoch)
    model.load_state_dict(stopper.best_state)
    return tested(task, index, progress, evaluation_sums(model, task, test), len(test))


def close_epoch(task: Task, index: int, progress: Progress, callbacks: Callbacks, train_loss: torch.Tensor,
                val_sums: torch.Tensor | None, n_val: int) -> bool:
    """The end of an epoch, wherever its batches came from: its metrics (TrainingDiverged
    if a loss is not finite), early stopping's decision, the report and the checkpoint.
    Whether training stops. `val_sums` None: no validation split (a refit)."""
    # The epoch's single host synchronisation: training loss and validation sums together.
    parts = [train_loss.reshape(1)] + ([] if val_sums is None else [val_sums])
    values = torch.cat(parts).tolist()
    metrics = epoch_metrics(task, values[0], values[1:] if val_sums is not None else None, n_val,
                            progress.average)
    check_finite(metrics, progress.epoch)
    stopped = progress.stopper.on_epoch_end(progress.epoch, metrics, progress.model)
    callbacks.epoch_ended(index, EpochReport(progress.epoch, metrics, progress.stopper.best_epoch))
    callbacks.after_epoch(progress)
    return stopped


def tested(task: Task, index: int, progress: Progress, test_sums: torch.Tensor | None,
           n_test: int) -> FoldResult:
    """The fold's result, once the best epoch's weights are back and tested (`test_sums`
    None: a refit, which has no test rows)."""
    stopper = progress.stopper
    sums = test_sums.tolist() if test_sums is not None else None
    return FoldResult(index, Ending.SUCCEEDED, stopper.best_epoch, progress.epoch, stopper.best_metrics,
                      task.metrics(sums, n_test) if sums else {}, weights_bytes(stopper.best_state),
                      task.confusion(sums) if sums else None, target_epoch=stopper.target_epoch)
