"""The training loop of one fold: mini-batches of device tensors, early stopping, test.

Mini-batches are index slices of tensors that already sit on the device, not a
per-sample DataLoader; losses accumulate on the device and are read back once per
epoch, so the loop does one host synchronisation per epoch, not one per step.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from workers.early_stopping import EarlyStopping


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number; the fold cannot go on."""

EVAL_CHUNK = 8192  # rows per forward pass when evaluating; bounds the memory used


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    test_loss: float
    test_accuracy: float
    best_state: dict
    history: list[EpochReport] = field(default_factory=list)


def batch_starts(n_rows: int, batch_size: int | None) -> range:
    """Start offsets of an epoch's mini-batches; `None` means the full batch.

    The last batch keeps the remainder (n_rows % batch_size rows), so every sample
    is seen once per epoch.
    """
    size = n_rows if batch_size is None else batch_size
    return range(0, n_rows, size)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Split,
                    batch_size: int | None, generator: torch.Generator) -> float:
    """One pass over the training data in a fresh random order; returns the mean loss."""
    model.train()
    n = len(data)
    size = n if batch_size is None else batch_size
    order = torch.randperm(n, generator=generator).to(data.x.device)
    total = torch.zeros((), device=data.x.device)
    seen = 0
    for start in batch_starts(n, batch_size):
        idx = order[start:start + size]
        if len(idx) == 1 and has_batch_norm(model):
            continue  # batch norm cannot estimate a variance from one sample
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(idx)
        seen += len(idx)
    return (total / max(seen, 1)).item()


@torch.no_grad()
def evaluate(model: nn.Module, data: Split) -> tuple[float, float]:
    """Mean cross-entropy and accuracy, in evaluation mode (running BN stats, no dropout)."""
    model.eval()
    loss_sum = torch.zeros((), device=data.x.device)
    correct = torch.zeros((), device=data.x.device)
    for start in range(0, len(data), EVAL_CHUNK):
        logits = model(data.x[start:start + EVAL_CHUNK])
        target = data.y[start:start + EVAL_CHUNK]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    n = max(len(data), 1)
    return (loss_sum / n).item(), (correct / n).item()


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, *, train: Split, val: Split,
        test: Split, batch_size: int | None, max_epochs: int, stopper: EarlyStopping,
        seed: int, on_epoch_end: Callable[[EpochReport], None] = lambda report: None,
        ) -> TrainResult:
    """Train until early stopping, restore the best epoch's weights, then test them."""
    generator = torch.Generator().manual_seed(seed)
    history: list[EpochReport] = []
    for epoch in range(1, max_epochs + 1):
        train_loss = train_one_epoch(model, optimizer, train, batch_size, generator)
        val_loss, val_accuracy = evaluate(model, val)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            bad = train_loss if not math.isfinite(train_loss) else val_loss
            raise TrainingDiverged(f"loss became {bad} at epoch {epoch}")
        report = EpochReport(epoch, train_loss, val_loss, val_accuracy)
        history.append(report)
        on_epoch_end(report)
        if stopper.on_epoch_end(epoch, {"val_loss": val_loss, "val_accuracy": val_accuracy}, model):
            break
    model.load_state_dict(stopper.best_state)
    test_loss, test_accuracy = evaluate(model, test)
    return TrainResult(stopper.best_epoch, len(history), test_loss, test_accuracy,
                       stopper.best_state, history)
