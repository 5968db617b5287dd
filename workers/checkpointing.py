"""Epoch checkpoints of a fold in training, so a retried fold resumes where it stopped.

A checkpoint holds everything the next epoch depends on: the model, the optimizer's
state, early stopping's memory, the loss average, the shuffling generator, torch's
global random state (dropout masks) and the epoch number.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from torch import nn

from workers.early_stopping import EarlyStopping


@dataclass
class Progress:
    """The parts of a fold's training that change from epoch to epoch."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    stopper: EarlyStopping
    average: "object"          # workers.training.LossAverage
    generator: torch.Generator
    epoch: int = 0


def snapshot(progress: Progress) -> bytes:
    state = {
        "epoch": progress.epoch,
        "model": progress.model.state_dict(),
        "optimizer": progress.optimizer.state_dict(),
        "stopper": {k: getattr(progress.stopper, k) for k in
                    ("best_value", "best_epoch", "best_state", "epochs_without_improvement")},
        "average": {"value": progress.average.value, "count": progress.average.count},
        "generator": progress.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def restore(progress: Progress, data: bytes) -> None:
    """Put a fold back as it was at the end of the checkpointed epoch."""
    # On the CPU: random generator states must stay CPU tensors; load_state_dict moves
    # weights and optimizer state to the model's device itself.
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    progress.model.load_state_dict(state["model"])
    progress.optimizer.load_state_dict(state["optimizer"])
    for key, value in state["stopper"].items():
        setattr(progress.stopper, key, value)
    progress.average.value, progress.average.count = state["average"]["value"], state["average"]["count"]
    progress.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    progress.epoch = state["epoch"]


def checkpoint_epoch(data: bytes) -> int:
    """The epoch a checkpoint was taken after."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)["epoch"]
