"""Epoch checkpoints of a packed task (all folds of a job in one stacked model), so a
retried packed task resumes where it stopped, like workers.checkpointing for one fold."""
from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from workers.packed_model import PackedMLP
from workers.packed_optimizer import PackedOptimizer


@dataclass
class PackedProgress:
    """What a packed task's next epoch depends on."""
    model: PackedMLP
    optimizer: PackedOptimizer
    folds: list  # of workers.packed_training.PackedFold
    epoch: int = 0


STOPPER_FIELDS = ("best_value", "best_epoch", "best_state", "epochs_without_improvement")


def snapshot_pack(progress: PackedProgress) -> bytes:
    folds = [{"stopper": {k: getattr(f.stopper, k) for k in STOPPER_FIELDS},
              "average": (f.average.value, f.average.count), "generator": f.generator.get_state(),
              "active": f.active, "error": f.error, "epochs_done": f.epochs_done}
             for f in progress.folds]
    state = {"epoch": progress.epoch, "model": progress.model.state_dict(),
             "optimizer": progress.optimizer.state_dict(), "folds": folds,
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def restore_pack(progress: PackedProgress, data: bytes) -> None:
    # Loaded on the CPU: generator states must stay CPU tensors (see workers.checkpointing).
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    progress.model.load_state_dict(state["model"])
    progress.optimizer.load_state_dict(state["optimizer"])
    for fold, saved in zip(progress.folds, state["folds"]):
        for key, value in saved["stopper"].items():
            setattr(fold.stopper, key, value)
        fold.average.value, fold.average.count = saved["average"]
        fold.generator.set_state(saved["generator"])
        fold.active, fold.error, fold.epochs_done = saved["active"], saved["error"], saved["epochs_done"]
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    progress.epoch = state["epoch"]


def pack_epoch(data: bytes) -> int:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)["epoch"]
