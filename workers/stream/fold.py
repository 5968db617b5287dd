"""One fold trained on a Parquet dataset read a row group at a time: memory bounded by the
shuffle buffer and the read-ahead, not by the number of rows.

The same fold as workers.fold in memory, step for step where it can be:
- its encoding is fitted in one streaming pass over its training rows (workers.stream.stats),
  exactly as in memory, and so are a regression target's mean and deviation;
- an epoch's mini-batches come through a bounded shuffle buffer (workers.stream.batches):
  the same rows, each once, in a buffered-shuffle order rather than a full permutation;
- `batch_size: "full"` is the lecture's batch gradient descent: the gradient of the mean
  loss over every training row, accumulated chunk by chunk, then one step per epoch
  (with batch norm, each slice of EVAL_CHUNK rows is normalized by its own statistics);
- validation and test stream too, their sums accumulated on the device;
- early stopping, the best checkpoint and resuming after a worker's death work as in
  memory: a checkpoint is taken at the end of an epoch, and a retry resumes after it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from workers.callbacks import Callbacks
from workers.checkpointing import Progress
from workers.config import TrainingConfig
from workers.early_stopping import EarlyStopping, make_stopper
from workers import encoding as encodings
from workers.encoding import encode_with
from workers.models import build_model
from workers.optimizers import build_optimizer
from workers.plans import DataInfo, FoldPlan
from workers.results import FoldResult
from workers.stream.batches import DEFAULT_BUFFER_ROWS, evaluation_chunks, to_device, training_batches
from workers.stream.source import ParquetSource
from workers.stream.stats import fit_encoding
from workers.table import Table
from workers.tasks import Classification, Regression
from workers.training import EVAL_CHUNK, LossAverage, TrainingDiverged, close_epoch, has_batch_norm, tested

Task = Classification | Regression
Batches = Iterator[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Rows:
    """A fold's rows as masks over the file's rows."""
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @classmethod
    def of(cls, plan: FoldPlan) -> "Rows":
        fold = plan.fold_of_row
        test, val = fold == plan.position, fold == (plan.position + 1) % plan.folds
        return cls(~(test | val), val, test)


@dataclass(frozen=True)
class StreamedData:
    """Where a fold's batches come from, and how a row group becomes inputs and targets."""
    source: ParquetSource
    rows: Rows
    encode: Callable[[Table], tuple[np.ndarray, np.ndarray]]
    buffer_rows: int

    def train_batches(self, batch_size: int | None, epoch_seed: int) -> Batches:
        if batch_size is None:  # the full batch: every training row, chunk by chunk
            return evaluation_chunks(self.source, self.rows.train, self.encode)
        return training_batches(self.source, self.rows.train, self.encode, batch_size=batch_size,
                                epoch_seed=epoch_seed, buffer_rows=self.buffer_rows)

    def chunks(self, mask: np.ndarray) -> Batches:
        return evaluation_chunks(self.source, mask, self.encode)


def run_streamed_fold(source: ParquetSource, info: DataInfo, plan: FoldPlan, config: TrainingConfig, *,
                      device: torch.device, callbacks: Callbacks | None = None,
                      resume_from: bytes | None = None,
                      buffer_rows: int = DEFAULT_BUFFER_ROWS) -> FoldResult:
    """Train fold `plan.index` reading `source` a row group at a time."""
    seed = config.fold_seed(plan.index)
    torch.manual_seed(seed)  # same initial weights every time this fold runs
    rows = Rows.of(plan)
    encoding = fit_encoding(source, rows.train)
    check_width(encoding, info)
    task, targets, preprocessing = target_of(source, rows.train, info)
    source.release_unused_memory()
    preprocessing = {**encoding.state(), "imputed": encoding.imputed, **preprocessing}

    def encode(table: Table) -> tuple[np.ndarray, np.ndarray]:
        return encode_with(table.features, encoding), targets(table.label)

    data = StreamedData(source, rows, encode, buffer_rows)
    model = build_model(config.model, info.input_shape, task.n_outputs).to(device)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    stopper = make_stopper(config)
    result = fit_streamed(model, optimizer, task, data, index=plan.index, config=config, stopper=stopper,
                          seed=seed, device=device, callbacks=callbacks or Callbacks(),
                          resume_from=resume_from)
    return replace(result, preprocessing=preprocessing)


def check_width(encoding, info: DataInfo) -> None:
    """The file must still be what the job was checked against: a column that changed
    type (numbers become strings) or gained categories changes the inputs' width."""
    width = len(encoding.numbers) + sum(len(s["categories"]) for s in encoding.strings.values())
    if width != int(np.prod(info.input_shape)):
        raise ValueError(f"the data encode to {width} inputs; the job expected {info.input_shape}")


def target_of(source: ParquetSource, train: np.ndarray, info: DataInfo):
    """The task, how a row group's labels become targets, and what the exported model
    needs to turn outputs back: class indices, or values standardized with the training
    rows' mean and deviation (one streaming pass, exact)."""
    if info.task == "classification":
        classes = np.asarray(info.classes)
        return (Classification(info.n_classes),
                lambda label: np.searchsorted(classes, label).astype(np.int64),
                {"classes": list(info.classes)})
    mean, std = label_moments(source, train)
    scale = std or 1.0
    return (Regression(target_scale=scale),
            lambda label: ((label.astype(np.float64) - mean) / scale).astype(encodings.FEATURE_DTYPE),
            {"target": {"mean": mean, "std": scale}})


def label_moments(source: ParquetSource, train: np.ndarray) -> tuple[float, float]:
    """Mean and (population) deviation of the training rows' label, merged group by group
    (Chan et al.): exact where a running sum of squares would cancel catastrophically."""
    count, mean, m2 = 0, 0.0, 0.0
    for group in source.groups:
        keep = train[group.start:group.stop]
        if not keep.any():
            continue
        values = source.read_label(group)[keep].astype(np.float64)
        n, m = len(values), float(values.mean())
        delta, total = m - mean, count + len(values)
        mean += delta * n / total
        m2 += float(((values - m) ** 2).sum()) + delta * delta * count * n / total
        count = total
    return mean, math.sqrt(m2 / count) if count else 0.0


def fit_streamed(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, data: StreamedData, *,
                 index: int, config: TrainingConfig, stopper: EarlyStopping, seed: int,
                 device: torch.device, callbacks: Callbacks, resume_from: bytes | None) -> FoldResult:
    """As workers.training.fit, on streamed batches: train until early stopping, restore
    the best epoch's weights, test them; a loss that stops being finite fails the fold."""
    progress = Progress(model, optimizer, stopper, LossAverage(config.loss_ewma_beta),
                        torch.Generator().manual_seed(seed))
    if resume_from is not None:
        progress.restore(resume_from)
    stopped = progress.epoch > 0 and stopper.ran_out()
    while not stopped and progress.epoch < config.max_epochs:
        progress.epoch += 1
        # Drawn from the checkpointed generator: a resumed fold reads the same orders.
        epoch_seed = int(torch.randint(2**31 - 1, (1,), generator=progress.generator))
        train_loss = train_streamed_epoch(model, optimizer, task, data, config.batch_size, epoch_seed, device)
        val_sums = split_sums(model, task, data, data.rows.val, device)
        try:
            stopped = close_epoch(task, index, progress, callbacks, train_loss, val_sums, int(data.rows.val.sum()))
        except TrainingDiverged as error:
            return FoldResult.failed(index, str(error), progress.epoch)
    model.load_state_dict(stopper.best_state)
    test_sums = split_sums(model, task, data, data.rows.test, device)
    return tested(task, index, progress, test_sums, int(data.rows.test.sum()))


def train_streamed_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, data: StreamedData,
                         batch_size: int | None, epoch_seed: int, device: torch.device) -> torch.Tensor:
    """One pass over the training rows; the mean loss, still on the device."""
    model.train()
    if batch_size is None:
        return full_batch_step(model, optimizer, task, data, device)
    skip_single = has_batch_norm(model)  # batch norm cannot estimate a variance from one row
    total, seen = torch.zeros((), device=device), 0
    for x, y in data.train_batches(batch_size, epoch_seed):
        if len(y) == 1 and skip_single:
            continue
        x, y = to_device(x, y, device)
        loss = task.loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total.add_(loss.detach(), alpha=len(y))
        seen += len(y)
    return total / max(seen, 1)


def full_batch_step(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, data: StreamedData,
                    device: torch.device) -> torch.Tensor:
    """Batch gradient descent: the gradient of the mean loss over every training row,
    summed chunk by chunk (each chunk's mean loss weighted by its share of the rows),
    then one step."""
    rows = int(data.rows.train.sum())
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for x, y in sliced(data.train_batches(None, 0)):
        x, y = to_device(x, y, device)
        loss = task.loss(model(x), y) * (len(y) / rows)
        loss.backward()
        total.add_(loss.detach())
    optimizer.step()
    return total


def sliced(chunks: Batches) -> Batches:
    """Each chunk (a row group's rows) in slices of EVAL_CHUNK rows: one forward pass over
    a whole group would hold its activations at every layer (131,072 rows × 256 units is
    128 MiB a layer)."""
    for x, y in chunks:
        for start in range(0, len(y), EVAL_CHUNK):
            yield x[start:start + EVAL_CHUNK], y[start:start + EVAL_CHUNK]


@torch.no_grad()
def split_sums(model: nn.Module, task: Task, data: StreamedData, rows: np.ndarray,
               device: torch.device) -> torch.Tensor | None:
    """streamed_sums over these rows; None when there are none (a refit's validation and test)."""
    return streamed_sums(model, task, data.chunks(rows), device) if rows.any() else None


def streamed_sums(model: nn.Module, task: Task, chunks: Batches, device: torch.device) -> torch.Tensor:
    """The task's metric sums over streamed rows, in evaluation mode, on the device."""
    model.eval()
    sums = None
    for x, y in sliced(chunks):
        x, y = to_device(x, y, device)
        part = task.sums(model(x), y)
        sums = part if sums is None else sums + part
    if sums is None:
        raise ValueError("no rows to evaluate")
    return sums
