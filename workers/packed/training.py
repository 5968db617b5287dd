"""Training all k folds of a job at once, as one stacked model (job option pack_folds).

Each fold keeps what it would have alone: its own data and shuffling order (its own
generator, seeded as in the unpacked run), batch-norm statistics, early stopping and
best checkpoint, and dropout masks of its own (independent of the other folds', though
not the same draws as an unpacked run would make: packed and unpacked runs agree
exactly only without dropout). Folds whose training sets differ in size share each
step through a row mask; a fold that has stopped, or has no rows left in this epoch,
is frozen by the optimizer rather than stepped with a zero gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workers.callbacks import Callbacks, EpochReport
from workers.checkpointing import weights_bytes
from workers.early_stopping import EarlyStopping
from workers.graphed import CapturedStep, fallible_capture
from workers.packed.checkpointing import PackedProgress
from workers.packed.model import PackedMLP
from workers.packed.optimizer import PackedOptimizer
from workers.results import Ending, FoldResult
from workers.training import (EVAL_CHUNK, LossAverage, Split, Task, TrainingDiverged, check_finite,
                              epoch_metrics)


@dataclass
class Stack:
    """k splits padded to one tensor: x [k, rows, features], y [k, rows], sizes [k]."""
    x: torch.Tensor
    y: torch.Tensor
    sizes: list[int]

    @classmethod
    def of(cls, splits: list[Split]) -> "Stack":
        rows = max(len(s) for s in splits)
        x = splits[0].x.new_zeros((len(splits), rows, *splits[0].x.shape[1:]))
        y = splits[0].y.new_zeros((len(splits), rows))
        for k, split in enumerate(splits):
            x[k, :len(split)], y[k, :len(split)] = split.x, split.y
        return cls(x, y, [len(s) for s in splits])


@dataclass
class PackedFold:
    """One fold's own state inside the pack."""
    index: int
    seed: int
    task: Task  # per fold: a regression fold scales its MAE by its own training targets
    stopper: EarlyStopping
    average: LossAverage
    generator: torch.Generator = field(init=False)
    active: bool = True
    epochs_done: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)


class FoldView:
    """What EarlyStopping needs of a model (state_dict), for one fold of the pack."""

    def __init__(self, model: PackedMLP, k: int):
        self.model, self.k = model, k

    def state_dict(self) -> dict:
        return self.model.fold_state_dict(self.k)


def step_rows(sizes: list[int], batch_size: int | None) -> int:
    """Rows per fold in each packed step: the batch size, or the largest training set."""
    return max(sizes) if batch_size is None else batch_size


def epoch_plan(folds: list[PackedFold], sizes: list[int], batch_size: int | None, device):
    """Row order for one epoch, padded: (index [k, steps·B], valid [k, steps·B], B, steps).
    Every step has the same shape, so one captured step serves the whole epoch."""
    size = step_rows(sizes, batch_size)
    steps = max(-(-n // size) for n in sizes)
    width = steps * size
    index = torch.zeros(len(folds), width, dtype=torch.long)
    valid = torch.zeros(len(folds), width, dtype=torch.bool)
    for k, (fold, n) in enumerate(zip(folds, sizes)):
        if fold.active:  # a stopped fold draws nothing, as it would not run at all alone
            index[k, :n] = torch.randperm(n, generator=fold.generator)
            valid[k, :n] = True
    return index.to(device), valid.to(device), size, steps


class PackedStep:
    """One step of every fold on fixed buffers (rows and mask [k, B]), eager or replayed
    from a CUDA graph (workers.graphed); losses and row counts add up on the device."""

    def __init__(self, model: PackedMLP, optimizer: PackedOptimizer, task: Task, data: Stack,
                 size: int, min_rows: int, capture: bool = False):
        self.model, self.optimizer, self.task, self.data = model, optimizer, task, data
        k, device = len(data.sizes), data.x.device
        self.min_rows, self.folds_axis = min_rows, torch.arange(k, device=device)[:, None]
        self.rows = (torch.arange(size, device=device) % data.x.shape[1]).repeat(k, 1)
        self.mask = torch.ones(k, size, dtype=torch.bool, device=device)
        self.totals, self.seen = torch.zeros(k, device=device), torch.zeros(k, device=device)
        self.replay = CapturedStep(self.step, model, optimizer, capture)
        self.take_totals()  # drop the warm-up's

    def step(self) -> None:
        count = self.mask.sum(1)
        # Like the unpacked loop: no step on an empty batch, nor on a single row with batch norm.
        stepping = count >= self.min_rows
        mask = self.mask & stepping[:, None]
        output = self.model(self.data.x[self.folds_axis, self.rows], mask)
        per_row = self.task.loss(output.flatten(0, 1), self.data.y[self.folds_axis, self.rows].flatten(),
                                 "none")
        per_row = per_row.view(len(self.data.sizes), -1) * mask
        # The sum: each fold's gradient is that of its own mean loss.
        (per_row.sum(1) / count.clamp(min=1)).sum().backward()
        self.optimizer.step(stepping)
        self.totals += per_row.detach().sum(1)
        self.seen += mask.sum(1)

    def run(self, rows: torch.Tensor, mask: torch.Tensor) -> None:
        self.rows.copy_(rows)
        self.mask.copy_(mask)
        self.replay()

    def take_totals(self) -> torch.Tensor:
        """Each fold's mean loss since the last call."""
        mean = self.totals / self.seen.clamp(min=1)
        self.totals.zero_()
        self.seen.zero_()
        return mean


def packed_step(model: PackedMLP, optimizer: PackedOptimizer, task: Task, data: Stack,
                batch_size: int | None, min_rows: int) -> PackedStep:
    """The pack's step: captured in a CUDA graph on CUDA (eager if capture fails)."""
    size = step_rows(data.sizes, batch_size)
    if data.x.device.type == "cuda":
        captured = fallible_capture(lambda: PackedStep(model, optimizer, task, data, size, min_rows, True))
        if captured is not None:
            return captured
    return PackedStep(model, optimizer, task, data, size, min_rows)


def train_one_packed_epoch(model: PackedMLP, optimizer: PackedOptimizer, task: Task, data: Stack,
                           folds: list[PackedFold], batch_size: int | None, min_rows: int,
                           step: PackedStep | None = None) -> torch.Tensor:
    """One epoch for every active fold; each fold's mean training loss, on the device."""
    model.train()
    step = step or PackedStep(model, optimizer, task, data, step_rows(data.sizes, batch_size), min_rows)
    index, valid, size, steps = epoch_plan(folds, data.sizes, batch_size, data.x.device)
    for s in range(steps):
        step.run(index[:, s * size:(s + 1) * size], valid[:, s * size:(s + 1) * size])
    return step.take_totals()


@torch.no_grad()
def packed_evaluation_sums(model: PackedMLP, task: Task, data: Stack) -> torch.Tensor:
    """Each fold's metric sums on its own split, in evaluation mode: [k, sums]."""
    model.eval()
    sums = [None] * len(data.sizes)
    for start in range(0, data.x.shape[1], EVAL_CHUNK):
        output = model(data.x[:, start:start + EVAL_CHUNK])
        for k, n in enumerate(data.sizes):
            if n > start:
                part = task.sums(output[k, :n - start], data.y[k, start:min(n, start + EVAL_CHUNK)])
                sums[k] = part if sums[k] is None else sums[k] + part
    return torch.stack(sums)


def end_epoch(model: PackedMLP, folds: list[PackedFold], epoch: int, values: list[float],
              n_val: list[int], callbacks: Callbacks) -> None:
    """Metrics, early stopping and reports for each fold still training."""
    k = len(folds)
    train_losses, val_sums = values[:k], values[k:]
    width = len(val_sums) // k
    for position, (fold, loss) in enumerate(zip(folds, train_losses)):
        if not fold.active:
            continue
        metrics = epoch_metrics(fold.task, loss, val_sums[position * width:(position + 1) * width],
                                n_val[position], fold.average)
        try:
            check_finite(metrics, epoch)
        except TrainingDiverged as error:
            fold.active, fold.error = False, str(error)  # this fold fails; the others go on
            continue
        fold.epochs_done = epoch
        if fold.stopper.on_epoch_end(epoch, metrics, FoldView(model, position)):
            fold.active = False
        callbacks.epoch_ended(fold.index, EpochReport(epoch, metrics, fold.stopper.best_epoch))


def fit_packed(model: PackedMLP, optimizer: PackedOptimizer, folds: list[PackedFold], *,
               train: Stack, val: Stack, test: Stack, batch_size: int | None, max_epochs: int,
               batch_norm: bool, callbacks: Callbacks | None = None,
               resume_from: bytes | None = None) -> list[FoldResult]:
    """Train every fold until it stops, then test each one with its best weights.

    `callbacks` hears of every fold's epochs and may checkpoint the pack's progress;
    `resume_from`, such a checkpoint, continues after its epoch. A fold whose loss stops
    being finite fails alone.
    """
    callbacks = callbacks or Callbacks()
    task = folds[0].task  # loss and metric sums are the same function for every fold
    progress = PackedProgress(model, optimizer, folds)
    if resume_from is not None:
        progress.restore(resume_from)
    # Captured after any restore: the graph holds the tensors it saw.
    step = packed_step(model, optimizer, task, train, batch_size, min_rows=2 if batch_norm else 1)
    while progress.epoch < max_epochs and any(f.active for f in folds):
        progress.epoch += 1
        losses = train_one_packed_epoch(model, optimizer, task, train, folds, batch_size,
                                        step.min_rows, step)
        # One host synchronisation per epoch, for all folds together.
        values = torch.cat([losses, packed_evaluation_sums(model, task, val).flatten()]).tolist()
        end_epoch(model, folds, progress.epoch, values, val.sizes, callbacks)
        callbacks.after_epoch(progress)
    for k, fold in enumerate(folds):
        if fold.error is None:
            model.load_fold_state_dict(k, fold.stopper.best_state)
    test_sums = packed_evaluation_sums(model, task, test).tolist()
    return [fold_result(fold, test_sums[k], test.sizes[k]) for k, fold in enumerate(folds)]


def fold_result(fold: PackedFold, test_sums: list[float], n_test: int) -> FoldResult:
    if fold.error:
        return FoldResult.failed(fold.index, fold.error, fold.epochs_done)
    stopper = fold.stopper
    return FoldResult(fold.index, Ending.SUCCEEDED, stopper.best_epoch, fold.epochs_done, stopper.best_metrics,
                      fold.task.metrics(test_sums, n_test), weights_bytes(stopper.best_state),
                      fold.task.confusion(test_sums), target_epoch=stopper.target_epoch)
